import datetime as dt

import pydantic
import pytest
import stripe

from actors.billing import (
    BillingRunParams,
    BillTenantParams,
    period_end,
    previous_month,
)
from actors.charging import idempotency_key
from actors.stripe_calls import is_transient


def test_previous_month_crosses_year():
    assert previous_month(dt.date(2026, 1, 15)) == "2025-12"
    assert previous_month(dt.date(2026, 3, 1)) == "2026-02"


@pytest.mark.parametrize(
    "period",
    [
        "2026-13",
        "2026-1",
        "26-01",
        "next month",
        "",
        "2026-11\n",
        "\uff12\uff10\uff12\uff16-11",
    ],
)
def test_period_rejects_bad_form(period):
    with pytest.raises(pydantic.ValidationError) as caught:
        BillingRunParams(period=period)

    assert caught.value.errors()[0]["loc"] == ("period",)
    assert "YYYY-MM" in str(caught.value)


def test_period_rejects_unfinished_months():
    this_month = dt.datetime.now(dt.UTC).strftime("%Y-%m")

    with pytest.raises(pydantic.ValidationError, match="has not ended"):
        BillingRunParams(period=this_month)
    with pytest.raises(pydantic.ValidationError, match="has not ended"):
        BillingRunParams(period="2999-01")


def test_period_rejects_ancient_month():
    with pytest.raises(pydantic.ValidationError, match="more than 36 months"):
        BillingRunParams(period="2001-01")


@pytest.mark.parametrize("period", ["0000-01", "0001-01", "1999-12"])
def test_period_before_2000_rejected(period):
    with pytest.raises(pydantic.ValidationError, match="a month from 2000 on"):
        BillingRunParams(period=period)


def test_tenant_id_must_be_integer():
    with pytest.raises(pydantic.ValidationError):
        BillTenantParams(tenant_id="5", period="2026-10")
    with pytest.raises(pydantic.ValidationError):
        BillTenantParams(tenant_id=2**63, period="2026-10")


def test_unknown_param_rejected():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        BillingRunParams.model_validate({"period": "2026-10", "tenant": 3})


def test_idempotency_key_stable_per_attempt():
    assert idempotency_key(42, 1) == idempotency_key(42, 1)
    assert idempotency_key(42, 1) != idempotency_key(42, 2)
    assert idempotency_key(42, 1) != idempotency_key(43, 1)


def api_error(status: int) -> stripe.APIError:
    return stripe.APIError("failed", http_status=status)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (stripe.APIConnectionError("reset", should_retry=True), True),
        (stripe.APIConnectionError("bad certificate", should_retry=False), False),
        (stripe.RateLimitError("slow down", http_status=429), True),
        (api_error(500), True),
        (api_error(503), True),
        (api_error(409), True),
        (stripe.CardError("declined", None, "card_declined", http_status=402), False),
        (stripe.InvalidRequestError("bad", "amount", http_status=400), False),
        (stripe.IdempotencyError("mismatch", http_status=400), False),
        (stripe.AuthenticationError("no key", http_status=401), False),
    ],
)
def test_transient_classification(error, transient):
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("period", "end"),
    [
        ("2026-02", dt.datetime(2026, 3, 1, tzinfo=dt.UTC)),
        ("2026-12", dt.datetime(2027, 1, 1, tzinfo=dt.UTC)),
        ("2024-01", dt.datetime(2024, 2, 1, tzinfo=dt.UTC)),
    ],
)
def test_period_end_is_next_month_start(period, end):
    assert period_end(period) == end
