"""Platform billing: a monthly run that bills every paying tenant once."""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from typing import Any

from pydantic import Field, field_validator

from actors.ledger import (
    JobRequest,
    enqueue,
    enqueue_many,
    get_job_type,
    send_messages,
)
from actors.middleware import note_success_recorded, success_fence
from actors.registry import JobParams, job_type
from infra.db import driver_autocommit, run_sql, transaction
from infra.settings import get_settings
from models.jobs import Job, succeed_cte
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


def period_end(period: str) -> dt.datetime:
    """Return the first instant after the billing month, in UTC."""
    start = period_start(period)
    next_month = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return dt.datetime.combine(next_month, dt.time(), tzinfo=dt.UTC)


def check_period_form(value: str) -> str:
    if not PERIOD_PATTERN.fullmatch(value):
        raise ValueError("expected a month as YYYY-MM, e.g. 2026-11")
    if int(value[:4]) < 2000:
        raise ValueError(f"expected a month from 2000 on, got {value}")
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
                session,
                after_id=after_id,
                limit=page_size,
                created_before=period_end(params.period),
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


# bill_tenant runs once per tenant, so all of its work is one statement of
# plain SQL, built once and committed on its own. It reads the tenant and
# creates the invoice, or reads back the one that exists. A tenant with no
# paid plan, or created after the month ended, gets none. The statement then
# inserts the ledger row of the invoice's first charge unless its dedup key
# exists, and records the job's own success. The charge job's params and
# dedup key are those that charge_invoice's params model and natural key
# give, and a test checks that they match.
BILL_TENANT = f"""
    WITH tenant AS (
        SELECT id, plan_price_cents, currency,
               plan_price_cents > 0 AND created_at < %(period_end)s AS billable
        FROM tenants WHERE id = %(tenant_id)s
    ), inserted AS (
        INSERT INTO platform_invoices
            (tenant_id, period_start, amount_cents, amount_due_cents, currency,
             status, attempt_count, awaiting_payment_method)
        SELECT id, %(period_start)s, plan_price_cents, plan_price_cents, currency,
               'open', 0, false
        FROM tenant WHERE billable
        ON CONFLICT (tenant_id, period_start) DO NOTHING
        RETURNING id
    ), invoice AS (
        SELECT id, true AS created FROM inserted
        UNION ALL
        SELECT id, false FROM platform_invoices
        WHERE tenant_id = %(tenant_id)s AND period_start = %(period_start)s
          AND NOT EXISTS (SELECT 1 FROM inserted)
          AND EXISTS (SELECT 1 FROM tenant WHERE billable)
    ), charge_job AS (
        INSERT INTO jobs
            (id, type, params, dedup_key, queue, tenant_id, status, attempts,
             deaths)
        SELECT %(charge_job_id)s, %(charge_type)s,
               jsonb_build_object(
                   'invoice_id', id, 'attempt_number', 1, 'due_at', NULL),
               'charge-invoice:' || id || ':1', %(charge_queue)s, %(tenant_id)s,
               'enqueued', 0, 0
        FROM invoice
        ON CONFLICT (dedup_key) DO NOTHING
        RETURNING id, params, dedup_key
    ), {
    succeed_cte(
        "(SELECT jsonb_build_object('invoice_id', id, 'created', created)"
        " FROM invoice)",
        condition_sql="EXISTS (SELECT 1 FROM invoice)",
    )
}
    SELECT tenant.plan_price_cents, tenant.billable,
           invoice.id AS invoice_id, invoice.created,
           charge_job.params AS charge_params,
           charge_job.dedup_key AS charge_dedup_key,
           EXISTS (SELECT 1 FROM succeeded_job) AS job_recorded
    FROM tenant
    LEFT JOIN invoice ON true
    LEFT JOIN charge_job ON true
"""


@job_type(
    queue="billing",
    params=BillTenantParams,
    time_limit_ms=60_000,
    natural_key=lambda p: f"bill-tenant:{p.tenant_id}:{p.period}",
    tenant_id_of=lambda p: p.tenant_id,
)
def bill_tenant(params: BillTenantParams) -> dict[str, Any]:
    """Create the tenant's invoice for the period, once, and enqueue its charge.

    The invoice, the charge job's ledger row and this job's success commit
    together, so a crash leaves either all or none of them. The charge
    job's message is sent after the commit; if this process dies first, the
    sweeper sends it.
    """
    charge_type = get_job_type("charge_invoice")
    fence = success_fence()
    arguments = {
        "tenant_id": params.tenant_id,
        "period_start": period_start(params.period),
        "period_end": period_end(params.period),
        "charge_job_id": uuid.uuid4(),
        "charge_type": charge_type.name,
        "charge_queue": charge_type.queue,
        **fence,
    }
    with driver_autocommit() as conn:
        rows, _ = run_sql(conn, BILL_TENANT, arguments)
        row = rows[0] if rows else None
        if row is not None and row.billable and row.invoice_id is None:
            # Another transaction created the invoice after this statement's
            # snapshot was taken. The same statement, run again, finds it.
            rows, _ = run_sql(conn, BILL_TENANT, arguments)
            row = rows[0] if rows else None
    if row is None:
        return {"invoice_id": None, "skipped": "tenant not found"}
    if row.plan_price_cents <= 0:
        return {"invoice_id": None, "skipped": "tenant has no paid plan"}
    if not row.billable:
        return {
            "invoice_id": None,
            "skipped": f"tenant was created after {params.period} ended",
        }
    if row.invoice_id is None:
        raise RuntimeError(
            f"invoice of tenant {params.tenant_id} for {params.period} is neither "
            "created nor found; the job will retry"
        )
    if fence["job_id"] is not None:
        note_success_recorded(row.job_recorded)
    if row.charge_dedup_key is not None:
        charge = Job(
            id=arguments["charge_job_id"],
            type=charge_type.name,
            params=row.charge_params,
            dedup_key=row.charge_dedup_key,
            queue=charge_type.queue,
        )
        send_messages([charge])
    return {"invoice_id": row.invoice_id, "created": row.created}
