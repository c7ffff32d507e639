"""POST, GET and PATCH /v1/tenants and the platform-invoice listing."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from infra.db import transaction
from models.billing import InvoiceStatus, PlatformInvoice
from models.tenants import Tenant

VALID_TENANT = {
    "name": "Clinic Gamma",
    "time_zone": "Europe/Berlin",
    "plan_price_cents": 4900,
    "currency": "EUR",
    "stripe_customer_id": "cus_gamma",
    "stripe_payment_method_id": "pm_card_visa",
}


def tenant_count() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(Tenant))


def error_fields(response: TestResponse) -> list[str]:
    return [problem["field"] for problem in response.json["error"]["details"]["fields"]]


def add_invoice(tenant_id: int, period: str, **fields: object) -> int:
    year, month = (int(part) for part in period.split("-"))
    with transaction() as session:
        invoice = PlatformInvoice(
            tenant_id=tenant_id,
            period_start=dt.date(year, month, 1),
            amount_cents=4900,
            amount_due_cents=4900,
            currency="eur",
            **fields,
        )
        session.add(invoice)
        session.flush()
        return invoice.id


def get_invoice(invoice_id: int) -> PlatformInvoice:
    with transaction() as session:
        invoice = session.get(PlatformInvoice, invoice_id)
        assert invoice is not None
        return invoice


def test_create_tenant_returns_201(client, operator):
    response = client.post("/v1/tenants", json=VALID_TENANT, headers=operator.headers)

    assert response.status_code == 201
    assert response.json["name"] == "Clinic Gamma"
    assert response.json["currency"] == "eur"
    assert response.json["time_zone"] == "Europe/Berlin"
    assert response.json["status"] == "active"
    assert tenant_count() == 1


def test_create_tenant_defaults(client, operator):
    body = {"name": "Clinic Delta", "plan_price_cents": 0}

    response = client.post("/v1/tenants", json=body, headers=operator.headers)

    assert response.status_code == 201
    assert response.json["time_zone"] == "UTC"
    assert response.json["currency"] == "eur"
    assert response.json["stripe_customer_id"] is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
        ({"plan_price_cents": -1}, "plan_price_cents"),
        ({"plan_price_cents": 10_000_001}, "plan_price_cents"),
        ({"plan_price_cents": "4900"}, "plan_price_cents"),
        ({"plan_price_cents": 49.5}, "plan_price_cents"),
        ({"currency": "eu"}, "currency"),
        ({"currency": "e1r"}, "currency"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"stripe_customer_id": "cu_123"}, "stripe_customer_id"),
        ({"stripe_customer_id": "cus_"}, "stripe_customer_id"),
        ({"stripe_payment_method_id": "card_123"}, "stripe_payment_method_id"),
        ({"plan": "gold"}, "plan"),
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "xau"}, "currency"),
        ({"currency": "XXX"}, "currency"),
        ({"currency": "clf"}, "currency"),
        ({"name": "Clinic\tGamma"}, "name"),
        ({"name": "Clinic\nGamma"}, "name"),
        ({"name": "\u200b"}, "name"),
        ({"stripe_customer_id": None}, "stripe_customer_id"),
    ],
)
def test_create_tenant_invalid_field_rejected(client, operator, change, field):
    body = {**VALID_TENANT, **change}

    response = client.post("/v1/tenants", json=body, headers=operator.headers)

    assert response.status_code == 422
    assert error_fields(response) == [field]
    assert tenant_count() == 0


@pytest.mark.parametrize("currency", ["xof", "XPF", "usd", "jpy"])
def test_create_tenant_national_currency_accepted(client, operator, currency):
    body = {**VALID_TENANT, "currency": currency}

    response = client.post("/v1/tenants", json=body, headers=operator.headers)

    assert response.status_code == 201
    assert response.json["currency"] == currency.lower()


def test_create_tenant_missing_fields_listed(client, operator):
    response = client.post("/v1/tenants", json={}, headers=operator.headers)

    assert response.status_code == 422
    assert sorted(error_fields(response)) == ["name", "plan_price_cents"]


def test_get_tenant_by_operator_and_owner(client, operator, tenant_a):
    path = f"/v1/tenants/{tenant_a.tenant_id}"

    by_operator = client.get(path, headers=operator.headers)
    by_owner = client.get(path, headers=tenant_a.headers)

    assert by_operator.status_code == 200
    assert by_owner.status_code == 200
    assert by_owner.json == by_operator.json
    assert by_owner.json["name"] == "Clinic Alpha"


@pytest.mark.parametrize("path", ["/v1/tenants/999", "/v1/tenants/abc"])
def test_get_tenant_missing_is_404(client, operator, path):
    response = client.get(path, headers=operator.headers)

    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_patch_tenant_changes_fields(client, operator, make_tenant):
    tenant_id = make_tenant(name="Clinic Echo")
    body = {"name": "Clinic Echo North", "plan_price_cents": 5900, "status": "past_due"}

    response = client.patch(
        f"/v1/tenants/{tenant_id}", json=body, headers=operator.headers
    )

    assert response.status_code == 200
    assert response.json["name"] == "Clinic Echo North"
    assert response.json["plan_price_cents"] == 5900
    assert response.json["status"] == "past_due"
    assert response.json["stripe_payment_method_id"] == "pm_card_visa"


def test_patch_tenant_changes_time_zone(client, operator, make_tenant):
    tenant_id = make_tenant()

    response = client.patch(
        f"/v1/tenants/{tenant_id}",
        json={"time_zone": "Europe/Lisbon"},
        headers=operator.headers,
    )

    assert response.status_code == 200
    assert response.json["time_zone"] == "Europe/Lisbon"


def test_patch_currency_rejected_with_reason(client, operator, make_tenant):
    tenant_id = make_tenant()

    response = client.patch(
        f"/v1/tenants/{tenant_id}", json={"currency": "usd"}, headers=operator.headers
    )

    assert response.status_code == 422
    [problem] = response.json["error"]["details"]["fields"]
    assert problem["field"] == "currency"
    assert problem["message"].startswith("cannot be changed")


def test_patch_tenant_clears_payment_method(client, operator, make_tenant):
    tenant_id = make_tenant()

    response = client.patch(
        f"/v1/tenants/{tenant_id}",
        json={"stripe_payment_method_id": None},
        headers=operator.headers,
    )

    assert response.status_code == 200
    assert response.json["stripe_payment_method_id"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": None}, "name"),
        ({"status": "closed"}, "status"),
        ({"plan_price_cents": -5}, "plan_price_cents"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"time_zone": None}, "time_zone"),
        ({"currency": "usd"}, "currency"),
        ({"stripe_payment_method_id": "tok_visa"}, "stripe_payment_method_id"),
    ],
)
def test_patch_tenant_invalid_field_rejected(
    client, operator, make_tenant, body, field
):
    tenant_id = make_tenant(name="Clinic Foxtrot")

    response = client.patch(
        f"/v1/tenants/{tenant_id}", json=body, headers=operator.headers
    )

    assert response.status_code == 422
    assert error_fields(response) == [field]
    with transaction() as session:
        assert session.get(Tenant, tenant_id).name == "Clinic Foxtrot"


def test_patch_missing_tenant_is_404(client, operator):
    response = client.patch(
        "/v1/tenants/999", json={"name": "Nobody"}, headers=operator.headers
    )

    assert response.status_code == 404


def test_patch_payment_method_rearms_invoices(client, operator, make_tenant):
    tenant_id = make_tenant(stripe_payment_method_id="pm_card_chargeDeclined")
    other_tenant_id = make_tenant(name="Clinic Golf")
    awaiting = add_invoice(
        tenant_id,
        "2025-05",
        status=InvoiceStatus.PAYMENT_FAILED,
        awaiting_payment_method=True,
        attempt_count=1,
    )
    paid = add_invoice(tenant_id, "2025-04", status=InvoiceStatus.PAID)
    other = add_invoice(
        other_tenant_id,
        "2025-05",
        status=InvoiceStatus.PAYMENT_FAILED,
        awaiting_payment_method=True,
    )
    before = dt.datetime.now(dt.UTC)

    response = client.patch(
        f"/v1/tenants/{tenant_id}",
        json={"stripe_payment_method_id": "pm_card_visa"},
        headers=operator.headers,
    )

    assert response.status_code == 200
    rearmed = get_invoice(awaiting)
    assert rearmed.awaiting_payment_method is False
    assert rearmed.next_attempt_at is not None
    assert rearmed.next_attempt_at >= before - dt.timedelta(seconds=5)
    assert rearmed.next_attempt_at <= dt.datetime.now(dt.UTC)
    assert get_invoice(paid).next_attempt_at is None
    assert get_invoice(other).awaiting_payment_method is True


def test_patch_same_payment_method_keeps_invoices(client, operator, make_tenant):
    tenant_id = make_tenant(stripe_payment_method_id="pm_card_visa")
    awaiting = add_invoice(
        tenant_id,
        "2025-05",
        status=InvoiceStatus.PAYMENT_FAILED,
        awaiting_payment_method=True,
    )

    response = client.patch(
        f"/v1/tenants/{tenant_id}",
        json={"stripe_payment_method_id": "pm_card_visa"},
        headers=operator.headers,
    )

    assert response.status_code == 200
    assert get_invoice(awaiting).awaiting_payment_method is True


def test_list_invoices_pages_newest_first(client, operator, tenant_a, tenant_b):
    created = [add_invoice(tenant_a.tenant_id, f"2025-{m:02d}") for m in range(1, 6)]
    add_invoice(tenant_b.tenant_id, "2025-01")
    path = f"/v1/tenants/{tenant_a.tenant_id}/platform-invoices"
    seen: list[int] = []
    cursor = None

    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, query_string=query, headers=tenant_a.headers)
        assert response.status_code == 200
        seen.extend(invoice["id"] for invoice in response.json["data"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(created))


def test_list_invoices_by_operator(client, operator, tenant_a):
    invoice_id = add_invoice(tenant_a.tenant_id, "2025-03")

    response = client.get(
        f"/v1/tenants/{tenant_a.tenant_id}/platform-invoices",
        headers=operator.headers,
    )

    assert response.status_code == 200
    assert [invoice["id"] for invoice in response.json["data"]] == [invoice_id]
    assert response.json["data"][0]["period"] == "2025-03"
    assert response.json["next_cursor"] is None


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"cursor": "!!"}, "cursor"),
        ({"cursor": cursor_of(" 1")}, "cursor"),
        ({"cursor": cursor_of("1_0")}, "cursor"),
        ({"cursor": cursor_of("+5")}, "cursor"),
        ({"page": 2}, "page"),
    ],
)
def test_list_invoices_invalid_query_rejected(client, operator, tenant_a, query, field):
    response = client.get(
        f"/v1/tenants/{tenant_a.tenant_id}/platform-invoices",
        query_string=query,
        headers=operator.headers,
    )

    assert response.status_code == 422
    assert error_fields(response) == [field]


def test_list_invoices_missing_tenant_is_404(client, operator):
    response = client.get("/v1/tenants/999/platform-invoices", headers=operator.headers)

    assert response.status_code == 404


def test_patch_removing_customer_keeps_card_rejected(client, operator, make_tenant):
    tenant_id = make_tenant()

    response = client.patch(
        f"/v1/tenants/{tenant_id}",
        json={"stripe_customer_id": None},
        headers=operator.headers,
    )

    assert response.status_code == 422
    assert error_fields(response) == ["stripe_customer_id"]
    with transaction() as session:
        assert session.get(Tenant, tenant_id).stripe_customer_id == "cus_test"
