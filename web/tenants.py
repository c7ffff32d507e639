"""Tenants: create, read and change clinics, and list their platform invoices."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import unicodedata
import zoneinfo
from typing import Annotated, Any

import pycountry
from flask_openapi3 import APIBlueprint, Tag
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from infra.db import transaction
from models.billing import InvoiceStatus, list_invoices, rearm_awaiting_invoices
from models.tenants import Tenant, TenantStatus
from web.auth import (
    SECURITY_SCHEME,
    authenticate_request,
    operator_only,
    require_tenant_access,
)
from web.errors import (
    ErrorResponse,
    QueryInt,
    error_responses,
    not_found,
    require_json_body,
    validation_failed,
)
from web.jobs import MAX_BIGINT, decode_cursor, encode_cursor

logger = logging.getLogger(__name__)

MAX_PLAN_PRICE_CENTS = 10_000_000
CURRENCY_PATTERN = re.compile(r"^[A-Za-z]{3}$")
STRIPE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")

api = APIBlueprint(
    "tenants",
    __name__,
    url_prefix="/v1",
    abp_tags=[Tag(name="tenants", description="Clinics and their platform invoices")],
    abp_security=[{SECURITY_SCHEME: []}],
    abp_responses={401: ErrorResponse, **error_responses(503)},
)
api.before_request(authenticate_request)
api.before_request(require_json_body)


# Entries of the system's zoneinfo folder that are not IANA zone names.
NOT_ZONE_NAMES = frozenset({"localtime", "posixrules", "Factory"})


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - NOT_ZONE_NAMES


def _check_time_zone(value: str) -> str:
    if value not in _time_zones():
        raise ValueError(
            f"unknown time zone {value!r}; expected an IANA name such as "
            "Europe/Berlin or UTC"
        )
    return value


# ISO 4217 codes that are not money a clinic can be charged in. The other X
# codes (the CFA and CFP francs, the East Caribbean dollar) are currencies.
PRECIOUS_METALS = ("xag", "xau", "xpd", "xpt")
ACCOUNTING_UNITS = ("xba", "xbb", "xbc", "xbd", "xdr", "xsu", "xua")
NO_CURRENCY = ("xts", "xxx")
FUND_CODES = ("bov", "che", "chw", "clf", "cou", "mxv", "usn", "uyi", "uyw")
NOT_CHARGEABLE_CURRENCIES = frozenset(
    PRECIOUS_METALS + ACCOUNTING_UNITS + NO_CURRENCY + FUND_CODES
)


def _check_currency(value: str) -> str:
    if not CURRENCY_PATTERN.match(value) or not pycountry.currencies.get(
        alpha_3=value.upper()
    ):
        raise ValueError(
            f"invalid currency {value!r}; expected a 3-letter ISO 4217 code such as eur"
        )
    if value.lower() in NOT_CHARGEABLE_CURRENCIES:
        name = pycountry.currencies.get(alpha_3=value.upper()).name
        raise ValueError(
            f"currency {value!r} ({name}) is not money that can be charged; "
            "use the clinic's national currency, such as eur"
        )
    return value.lower()


def _check_name(value: str) -> str:
    # Control and format characters (tabs, newlines, zero-width spaces) would
    # make a name that reads as blank or breaks lines in notifications.
    for character in value:
        if unicodedata.category(character).startswith("C"):
            raise ValueError(
                f"must not contain control or format characters, got "
                f"U+{ord(character):04X}"
            )
    return value


def _stripe_id(prefix: str, kind: str) -> AfterValidator:
    def check(value: str) -> str:
        rest = value.removeprefix(prefix)
        if rest == value or not STRIPE_ID_PATTERN.match(rest):
            raise ValueError(
                f"invalid Stripe {kind} id {value!r}; expected {prefix} followed by "
                "letters, digits or underscores"
            )
        return value

    return AfterValidator(check)


TenantName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_check_name),
]
TimeZoneName = Annotated[
    str,
    Field(max_length=64, examples=["Europe/Berlin"]),
    AfterValidator(_check_time_zone),
]
PlanPriceCents = Annotated[StrictInt, Field(ge=0, le=MAX_PLAN_PRICE_CENTS)]
Currency = Annotated[
    str, Field(max_length=3, examples=["eur"]), AfterValidator(_check_currency)
]
StripeCustomerId = Annotated[
    str,
    Field(max_length=255, examples=["cus_NffrFeUfNV2Hib"]),
    _stripe_id("cus_", "customer"),
]
StripePaymentMethodId = Annotated[
    str,
    Field(max_length=255, examples=["pm_card_visa"]),
    _stripe_id("pm_", "payment method"),
]


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TenantName
    time_zone: TimeZoneName = "UTC"
    plan_price_cents: PlanPriceCents = Field(
        description="Monthly plan price in the currency's minor unit."
    )
    currency: Currency = "eur"
    stripe_customer_id: StripeCustomerId | None = None
    stripe_payment_method_id: StripePaymentMethodId | None = None


class TenantUpdate(BaseModel):
    """The fields to change; absent fields keep their value.

    Setting a new ``stripe_payment_method_id`` makes every invoice that waits
    for a payment method due at once, for the next hourly charge run.
    """

    model_config = ConfigDict(extra="forbid")

    name: TenantName | None = None
    time_zone: TimeZoneName | None = None
    plan_price_cents: PlanPriceCents | None = None
    status: TenantStatus | None = None
    stripe_customer_id: StripeCustomerId | None = Field(
        None, description="null removes the customer id."
    )
    stripe_payment_method_id: StripePaymentMethodId | None = Field(
        None, description="null removes the payment method."
    )

    # Invoices carry the currency they were billed in, so a tenant keeps its
    # currency. The field is declared only to reject it with a clear reason.
    currency: SkipJsonSchema[object] = None

    @field_validator("currency", mode="before")
    @classmethod
    def _reject_currency(cls, value: object) -> object:
        raise ValueError(
            "cannot be changed after the tenant is created; create a new tenant "
            "for another currency"
        )

    @field_validator("name", "time_zone", "plan_price_cents", "status", mode="before")
    @classmethod
    def _reject_null(cls, value: object) -> object:
        # Runs only for fields sent in the body, so an explicit null fails here
        # while an absent field keeps its default.
        if value is None:
            raise ValueError("must not be null; omit the field to keep its value")
        return value


class TenantPath(BaseModel):
    tenant_id: int = Field(gt=0, le=MAX_BIGINT)


class InvoiceQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: QueryInt = Field(50, ge=1, le=200)
    cursor: str | None = Field(
        None, description="The next_cursor of the previous page.", max_length=200
    )


class TenantOut(BaseModel):
    id: int
    name: str
    time_zone: str
    plan_price_cents: int
    currency: str
    status: TenantStatus
    stripe_customer_id: str | None
    stripe_payment_method_id: str | None
    created_at: dt.datetime


class InvoiceOut(BaseModel):
    id: int
    tenant_id: int
    period: str = Field(description="Billed month as YYYY-MM.")
    amount_cents: int
    amount_due_cents: int
    currency: str
    status: InvoiceStatus
    attempt_count: int
    next_attempt_at: dt.datetime | None
    awaiting_payment_method: bool
    last_decline_code: str | None
    stripe_payment_intent_id: str | None
    paid_at: dt.datetime | None
    created_at: dt.datetime


class InvoicePage(BaseModel):
    data: list[InvoiceOut]
    next_cursor: str | None


@api.post(
    "/tenants",
    operation_id="createTenant",
    responses={201: TenantOut, **error_responses(400, 403, 413, 415, 422)},
)
@operator_only
def create_tenant(body: TenantCreate) -> tuple[dict[str, object], int]:
    """Create a tenant

    Needs an operator key.
    """
    _require_customer_for_card(body.stripe_customer_id, body.stripe_payment_method_id)
    with transaction() as session:
        tenant = Tenant(**body.model_dump())
        session.add(tenant)
        session.flush()
        created = tenant.to_dict()
    logger.info("tenant created", extra={"tenant_id": created["id"]})
    return created, 201


def _require_customer_for_card(
    customer: str | None, payment_method: str | None
) -> None:
    """Raise 422 for a payment method without the Stripe customer it belongs to.

    A PaymentIntent needs both, so such a tenant could never be charged.
    """
    if payment_method and not customer:
        raise validation_failed(
            [
                {
                    "field": "stripe_customer_id",
                    "message": "required while stripe_payment_method_id is set; "
                    "send the customer the payment method is attached to",
                }
            ]
        )


@api.get(
    "/tenants/<int:tenant_id>",
    operation_id="getTenant",
    responses={200: TenantOut, **error_responses(404, 422)},
)
def get_tenant(path: TenantPath) -> dict[str, object]:
    """Read a tenant

    Operator keys read any tenant; a tenant key reads only its own, and
    other tenants return 404.
    """
    require_tenant_access(path.tenant_id, resource=f"tenant {path.tenant_id}")
    with transaction() as session:
        tenant = session.get(Tenant, path.tenant_id)
        if tenant is None:
            raise not_found(f"tenant {path.tenant_id} not found")
        return tenant.to_dict()


@api.patch(
    "/tenants/<int:tenant_id>",
    operation_id="updateTenant",
    responses={200: TenantOut, **error_responses(400, 403, 404, 413, 415, 422)},
)
@operator_only
def update_tenant(path: TenantPath, body: TenantUpdate) -> dict[str, object]:
    """Change a tenant

    A new payment method makes the tenant's invoices that wait for one due
    at once, in the same transaction. Needs an operator key.
    """
    changes = body.model_dump(exclude_unset=True)
    with transaction() as session:
        tenant = session.get(Tenant, path.tenant_id, with_for_update=True)
        if tenant is None:
            raise not_found(f"tenant {path.tenant_id} not found")
        old_stripe_details = (
            tenant.stripe_customer_id,
            tenant.stripe_payment_method_id,
        )
        for field, value in changes.items():
            setattr(tenant, field, value)

        _require_customer_for_card(
            tenant.stripe_customer_id, tenant.stripe_payment_method_id
        )
        # New Stripe details make the invoices that waited for them due again:
        # those without a card, and those whose charge Stripe rejected.
        new_stripe_details = (
            tenant.stripe_customer_id,
            tenant.stripe_payment_method_id,
        )
        rearmed: list[int] = []
        if new_stripe_details != old_stripe_details and all(new_stripe_details):
            rearmed = rearm_awaiting_invoices(session, tenant_id=tenant.id)
        session.flush()
        updated = tenant.to_dict()
    logger.info(
        "tenant updated (%s); %d invoices waiting for a payment method are due now",
        ", ".join(sorted(changes)) or "no changes",
        len(rearmed),
        extra={"tenant_id": path.tenant_id},
    )
    return updated


@api.get(
    "/tenants/<int:tenant_id>/platform-invoices",
    operation_id="listPlatformInvoices",
    responses={200: InvoicePage, **error_responses(404, 422)},
)
def list_platform_invoices(path: TenantPath, query: InvoiceQuery) -> dict[str, Any]:
    """List a tenant's platform invoices, newest first

    Operator keys list any tenant's invoices; a tenant key only its own, and
    other tenants return 404. Pages follow next_cursor until it is null.
    """
    require_tenant_access(path.tenant_id, resource=f"tenant {path.tenant_id}")
    before_id = None
    if query.cursor is not None:
        try:
            [id_text] = decode_cursor(query.cursor, parts=1)
            # int() would also take spaces, signs and underscores.
            if not (id_text.isascii() and id_text.isdigit()):
                raise ValueError(f"invoice id {id_text!r} is not a number")
            before_id = int(id_text)
            if not 0 < before_id <= MAX_BIGINT:
                raise ValueError(f"invoice id {before_id} is out of range")
        except ValueError:
            raise validation_failed(
                [
                    {
                        "field": "cursor",
                        "message": "invalid cursor; pass the next_cursor of the "
                        "previous page unchanged",
                    }
                ]
            ) from None

    with transaction() as session:
        if session.get(Tenant, path.tenant_id) is None:
            raise not_found(f"tenant {path.tenant_id} not found")
        # Fetching one extra row shows whether another page exists.
        invoices = list_invoices(
            session,
            tenant_id=path.tenant_id,
            limit=query.limit + 1,
            before_id=before_id,
        )
    page = invoices[: query.limit]
    next_cursor = None
    if len(invoices) > query.limit:
        next_cursor = encode_cursor(str(page[-1].id))
    return {"data": [invoice.to_dict() for invoice in page], "next_cursor": next_cursor}
