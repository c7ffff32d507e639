"""Platform billing: a monthly run that bills every paying tenant once."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from pydantic import Field, field_validator
from sqlalchemy import Date, bindparam, text

from actors.ledger import JobRequest, enqueue, enqueue_many
from actors.registry import JobParams, job_type
from infra.db import transaction
from infra.settings import get_settings
from models.tenants import billable_tenant_ids

logger = logging.getLogger(__name__)

PERIOD_PATTERN = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
# Months further back than this are rejected as a likely typo; re-billing an
# older month is a manual operation.
MAX_PERIOD_AGE_MONTHS = 36
# A run enqueues at most this many pages, then continues in a new job, so no
# single message runs for longer than its time limit however many tenants exist.
PAGES_PER_RUN_JOB = 20


def previous_month(today: dt.date | None = None) -> str:
    """Return the month before ``today`` (UTC today by default) as YYYY-MM."""
    today = today or dt.datetime.now(dt.UTC).date()
    first = today.replace(day=1)
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


def period_start(period: str) -> dt.date:
    year, month = period.split("-")
    return dt.date(int(year), int(month), 1)


def check_period_form(value: str) -> str:
    if not PERIOD_PATTERN.fullmatch(value):
        raise ValueError("expected a month as YYYY-MM, e.g. 2026-11")
    return value


def months_between(earlier: dt.date, later: dt.date) -> int:
    return (later.year - earlier.year) * 12 + later.month - earlier.month


class BillingRunParams(JobParams):
    period: str = Field(
        default_factory=previous_month,
        description="Billing month as YYYY-MM; defaults to the previous UTC month.",
    )
    after_tenant_id: int = Field(
        0,
        ge=0,
        le=2**63 - 1,
        strict=True,
        description="Continue after this tenant id (set by continuations).",
    )

    @field_validator("period")
    @classmethod
    def _check_period(cls, value: str) -> str:
        check_period_form(value)
        this_month = dt.datetime.now(dt.UTC).date().replace(day=1)
        age = months_between(period_start(value), this_month)
        if age < 1:
            raise ValueError(
                f"{value} has not ended yet; a month is billed once it is over"
            )
        if age > MAX_PERIOD_AGE_MONTHS:
            raise ValueError(
                f"{value} is more than {MAX_PERIOD_AGE_MONTHS} months ago; "
                "expected a recent month"
            )
        return value


class BillTenantParams(JobParams):
    tenant_id: int = Field(gt=0, le=2**63 - 1, strict=True)
    period: str

    @field_validator("period")
    @classmethod
    def _check_period(cls, value: str) -> str:
        return check_period_form(value)


def _billing_run_key(params: BillingRunParams) -> str:
    if params.after_tenant_id:
        return f"billing-run:{params.period}:after:{params.after_tenant_id}"
    return f"billing-run:{params.period}"


@job_type(
    queue="billing",
    params=BillingRunParams,
    time_limit_ms=5 * 60_000,
    natural_key=_billing_run_key,
)
def billing_run(params: BillingRunParams) -> dict[str, Any]:
    """Enqueue one bill_tenant job per billable tenant, a page at a time."""
    page_size = get_settings().billing_page_size
    after_id = params.after_tenant_id
    enqueued = 0

    for _ in range(PAGES_PER_RUN_JOB):
        with transaction() as session:
            tenant_ids = billable_tenant_ids(
                session, after_id=after_id, limit=page_size
            )
            requests = [
                JobRequest(params={"tenant_id": tid, "period": params.period})
                for tid in tenant_ids
            ]
            results = enqueue_many("bill_tenant", requests, session=session)
        enqueued += sum(1 for r in results if r.created)
        if len(tenant_ids) < page_size:
            logger.info("billing run enqueued %d tenant jobs", enqueued)
            return {"period": params.period, "enqueued": enqueued, "continued": False}
        after_id = tenant_ids[-1]

    continuation = BillingRunParams(period=params.period, after_tenant_id=after_id)
    enqueue("billing_run", continuation)
    logger.info(
        "billing run enqueued %d tenant jobs, continuing after %d", enqueued, after_id
    )
    return {"period": params.period, "enqueued": enqueued, "continued": True}


# bill_tenant runs once per tenant, so it reads the tenant and creates the
# invoice in one statement of plain SQL built once. The invoice is left out
# for a tenant with no paid plan. An invoice that exists already is read back,
# and ``created`` tells the two apart.
CREATE_INVOICE = text(
    """
    WITH tenant AS (
        SELECT id, plan_price_cents, currency FROM tenants WHERE id = :tenant_id
    ), inserted AS (
        INSERT INTO platform_invoices
            (tenant_id, period_start, amount_cents, amount_due_cents, currency,
             status, attempt_count, awaiting_payment_method)
        SELECT id, :period_start, plan_price_cents, plan_price_cents, currency,
               'open', 0, false
        FROM tenant WHERE plan_price_cents > 0
        ON CONFLICT (tenant_id, period_start) DO NOTHING
        RETURNING id
    )
    SELECT tenant.plan_price_cents,
           coalesce((SELECT id FROM inserted),
                    (SELECT id FROM platform_invoices
                     WHERE tenant_id = :tenant_id
                       AND period_start = :period_start)) AS invoice_id,
           EXISTS (SELECT 1 FROM inserted) AS created
    FROM tenant
    """
).bindparams(bindparam("period_start", type_=Date))

FIND_INVOICE = text(
    "SELECT id FROM platform_invoices"
    " WHERE tenant_id = :tenant_id AND period_start = :period_start"
).bindparams(bindparam("period_start", type_=Date))


@job_type(
    queue="billing",
    params=BillTenantParams,
    time_limit_ms=60_000,
    natural_key=lambda p: f"bill-tenant:{p.tenant_id}:{p.period}",
    tenant_id_of=lambda p: p.tenant_id,
)
def bill_tenant(params: BillTenantParams) -> dict[str, Any]:
    """Create the tenant's invoice for the period, once, and enqueue its charge.

    The invoice and the charge job's ledger row commit together, so a crash
    leaves either both or neither.
    """
    start = period_start(params.period)
    with transaction() as session:
        row = session.execute(
            CREATE_INVOICE, {"tenant_id": params.tenant_id, "period_start": start}
        ).first()
        if row is None:
            return {"invoice_id": None, "skipped": "tenant not found"}
        if row.plan_price_cents <= 0:
            return {"invoice_id": None, "skipped": "tenant has no paid plan"}
        invoice_id = row.invoice_id
        if invoice_id is None:
            # Another transaction created the invoice after this statement's
            # snapshot was taken; a new statement sees it.
            invoice_id = session.scalar(
                FIND_INVOICE, {"tenant_id": params.tenant_id, "period_start": start}
            )
        enqueue(
            "charge_invoice",
            {"invoice_id": invoice_id, "attempt_number": 1},
            tenant_id=params.tenant_id,
            session=session,
        )
    return {"invoice_id": invoice_id, "created": row.created}
