"""Platform billing: a monthly run that bills every paying tenant once."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from actors.ledger import JobRequest, enqueue, enqueue_many
from actors.registry import JobParams, job_type
from infra.db import transaction
from infra.settings import get_settings
from models.billing import PlatformInvoice
from models.tenants import Tenant, billable_tenant_ids

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
    with transaction() as session:
        tenant = session.get(Tenant, params.tenant_id)
        if tenant is None:
            return {"invoice_id": None, "skipped": "tenant not found"}
        if tenant.plan_price_cents <= 0:
            return {"invoice_id": None, "skipped": "tenant has no paid plan"}

        invoice_id = session.scalar(
            insert(PlatformInvoice)
            .values(
                tenant_id=tenant.id,
                period_start=period_start(params.period),
                amount_cents=tenant.plan_price_cents,
                amount_due_cents=tenant.plan_price_cents,
                currency=tenant.currency,
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "period_start"])
            .returning(PlatformInvoice.id)
        )
        created = invoice_id is not None
        if not created:
            invoice_id = session.scalar(
                select(PlatformInvoice.id).where(
                    PlatformInvoice.tenant_id == tenant.id,
                    PlatformInvoice.period_start == period_start(params.period),
                )
            )
        enqueue(
            "charge_invoice",
            {"invoice_id": invoice_id, "attempt_number": 1},
            tenant_id=tenant.id,
            session=session,
        )
    return {"invoice_id": invoice_id, "created": created}
