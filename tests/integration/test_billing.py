"""The single statements of bill_tenant and charge_invoice, and jobs that record
their own success."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select, update

from actors import middleware
from actors.billing import BillTenantParams, bill_tenant
from actors.charging import ChargeInvoiceParams, charge_invoice, idempotency_key
from actors.errors import PermanentJobError
from actors.ledger import enqueue
from infra.db import transaction
from models.billing import ChargeAttempt, ChargeOutcome, InvoiceStatus, PlatformInvoice
from models.jobs import Job, JobStatus
from models.tenants import Tenant
from tests.conftest import wait_for
from tests.factories import all_jobs_finished, create_tenants, get_job, invoices


def test_charge_job_matches_enqueue(broker):
    [tenant_id] = create_tenants(1)

    result = bill_tenant(BillTenantParams(tenant_id=tenant_id, period="2026-10"))

    [invoice] = invoices()
    assert result == {"invoice_id": invoice.id, "created": True}
    # The statement builds the charge job's key and params in SQL. Enqueueing
    # the same charge through the ledger must find that job, not conflict.
    again = enqueue("charge_invoice", {"invoice_id": invoice.id, "attempt_number": 1})
    assert not again.created
    assert again.job.dedup_key == f"charge-invoice:{invoice.id}:1"
    assert again.job.queue == "charges"
    assert again.job.tenant_id == tenant_id
    assert again.job.status == JobStatus.ENQUEUED


def test_rerun_finds_invoice_and_charge(broker):
    [tenant_id] = create_tenants(1)
    params = BillTenantParams(tenant_id=tenant_id, period="2026-10")

    first = bill_tenant(params)
    second = bill_tenant(params)

    assert second == {"invoice_id": first["invoice_id"], "created": False}
    with transaction() as session:
        charge_jobs = session.scalars(
            select(Job).where(Job.type == "charge_invoice")
        ).all()
    assert len(charge_jobs) == 1


@pytest.mark.parametrize(
    ("change", "skipped"),
    [
        ("delete", "tenant not found"),
        ("free", "tenant has no paid plan"),
    ],
)
def test_skips_create_nothing(broker, change, skipped):
    [tenant_id] = create_tenants(1)
    with transaction() as session:
        if change == "delete":
            session.delete(session.get(Tenant, tenant_id))
        else:
            session.execute(
                update(Tenant).where(Tenant.id == tenant_id).values(plan_price_cents=0)
            )

    result = bill_tenant(BillTenantParams(tenant_id=tenant_id, period="2026-10"))

    assert result == {"invoice_id": None, "skipped": skipped}
    assert invoices() == []
    with transaction() as session:
        assert session.scalars(select(Job)).all() == []


def test_jobs_record_own_success(worker):
    [tenant_id] = create_tenants(1)

    enqueue("bill_tenant", {"tenant_id": tenant_id, "period": "2026-10"})
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    bill_job = get_job(f"bill-tenant:{tenant_id}:2026-10")
    charge_job = get_job(f"charge-invoice:{invoice.id}:1")
    assert bill_job is not None and charge_job is not None
    assert bill_job.status == JobStatus.SUCCEEDED
    assert bill_job.result == {"invoice_id": invoice.id, "created": True}
    assert bill_job.attempts == 1
    assert bill_job.finished_at is not None
    assert bill_job.lease_expires_at is None
    assert charge_job.status == JobStatus.SUCCEEDED
    assert charge_job.result == {
        "invoice_id": invoice.id,
        "outcome": "paid",
        "payment_intent": invoice.stripe_payment_intent_id,
    }


def running_job(dedup_key: str, *, attempts: int) -> uuid.UUID:
    """Insert a bill_tenant ledger row that a worker runs as attempt ``attempts``."""
    job_id = uuid.uuid4()
    with transaction() as session:
        session.add(
            Job(
                id=job_id,
                type="bill_tenant",
                params={},
                dedup_key=dedup_key,
                queue="billing",
                status=JobStatus.RUNNING,
                attempts=attempts,
                deaths=0,
            )
        )
    return job_id


@pytest.fixture
def run_as():
    """Make this thread look like a worker running a given attempt of a job."""

    def start(job_id: uuid.UUID, attempt: int) -> middleware.RunContext:
        run = middleware.RunContext(
            job_id=job_id, attempt=attempt, message_id=str(job_id)
        )
        middleware._local.run = run
        return run

    yield start
    middleware._local.run = None


def test_current_attempt_records_success(broker, run_as):
    [tenant_id] = create_tenants(1)
    job_id = running_job("bill-tenant:current", attempts=2)
    run = run_as(job_id, 2)

    result = bill_tenant(BillTenantParams(tenant_id=tenant_id, period="2026-10"))

    assert run.success_recorded
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.SUCCEEDED
        assert job.result == result


def test_fenced_out_attempt_records_nothing(broker, run_as, caplog):
    [tenant_id] = create_tenants(1)
    job_id = running_job("bill-tenant:taken-over", attempts=3)
    # Attempt 2 lost its lease and attempt 3 took the job over.
    run = run_as(job_id, 2)

    result = bill_tenant(BillTenantParams(tenant_id=tenant_id, period="2026-10"))

    # The work is idempotent and commits; the ledger row stays with attempt 3.
    assert result["created"] is True
    assert run.success_recorded
    assert "newer attempt took the job over" in caplog.text
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.RUNNING
        assert job.attempts == 3
        assert job.result is None


def test_decline_recorded_by_middleware(worker):
    """A decline is recorded by the middleware, not by the success statement."""
    [tenant_id] = create_tenants(1, payment_methods=["pm_card_chargeDeclined"])

    enqueue("bill_tenant", {"tenant_id": tenant_id, "period": "2026-10"})
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    charge_job = get_job(f"charge-invoice:{invoice.id}:1")
    assert charge_job is not None
    assert charge_job.status == JobStatus.SUCCEEDED
    assert charge_job.result["outcome"] == "declined"
    with transaction() as session:
        [attempt] = session.scalars(select(ChargeAttempt)).all()
    assert attempt.outcome.value == "declined"


def billed_invoice(**tenant_values) -> int:
    """Bill one new tenant directly and return the invoice id; no job is run."""
    [tenant_id] = create_tenants(1)
    if tenant_values:
        with transaction() as session:
            session.execute(
                update(Tenant).where(Tenant.id == tenant_id).values(**tenant_values)
            )
    return bill_tenant(BillTenantParams(tenant_id=tenant_id, period="2026-10"))[
        "invoice_id"
    ]


def set_invoice(invoice_id: int, **values) -> None:
    with transaction() as session:
        session.execute(
            update(PlatformInvoice)
            .where(PlatformInvoice.id == invoice_id)
            .values(**values)
        )


def charge(invoice_id: int, attempt_number: int = 1) -> dict:
    return charge_invoice(
        ChargeInvoiceParams(invoice_id=invoice_id, attempt_number=attempt_number)
    )


@pytest.mark.parametrize(
    ("values", "attempt_number", "skipped"),
    [
        ({"status": InvoiceStatus.PAID}, 1, "invoice is paid"),
        ({"status": InvoiceStatus.UNCOLLECTIBLE}, 1, "invoice is uncollectible"),
        ({}, 2, "attempt 2 is not next; 0 attempts were made"),
        (
            {"awaiting_payment_method": True},
            1,
            "invoice is waiting for a new payment method",
        ),
    ],
)
def test_charge_not_due_sends_nothing(
    broker, stripe_server, values, attempt_number, skipped
):
    invoice_id = billed_invoice()
    set_invoice(invoice_id, **values)

    result = charge(invoice_id, attempt_number)

    assert result == {"invoice_id": invoice_id, "skipped": skipped}
    assert stripe_server.request_count == 0
    with transaction() as session:
        assert session.scalars(select(ChargeAttempt)).all() == []


def test_charge_before_due_time_skipped(broker, stripe_server):
    invoice_id = billed_invoice()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    set_invoice(invoice_id, next_attempt_at=later)

    result = charge(invoice_id)

    assert result["skipped"].startswith("next attempt is due at ")
    assert stripe_server.request_count == 0


def test_charge_without_card_waits_for_one(broker, stripe_server):
    invoice_id = billed_invoice(stripe_payment_method_id=None)

    result = charge(invoice_id)

    assert result == {
        "invoice_id": invoice_id,
        "skipped": "tenant has no payment method",
    }
    assert stripe_server.request_count == 0
    with transaction() as session:
        invoice = session.get(PlatformInvoice, invoice_id)
        assert invoice.awaiting_payment_method is True
        assert invoice.next_attempt_at is None
        assert invoice.attempt_count == 0


def test_charge_reuses_pending_attempt(broker, stripe_server):
    invoice_id = billed_invoice()
    with transaction() as session:
        session.add(
            ChargeAttempt(
                invoice_id=invoice_id,
                attempt_number=1,
                idempotency_key=idempotency_key(invoice_id, 1),
                amount_cents=4900,
                currency="eur",
                outcome=ChargeOutcome.PENDING,
            )
        )
    set_invoice(invoice_id, attempt_count=1)

    first = charge(invoice_id)
    second = charge(invoice_id)

    assert first["outcome"] == "paid"
    assert second == {"invoice_id": invoice_id, "skipped": "invoice is paid"}
    [intent] = stripe_server.payment_intents()
    with transaction() as session:
        [attempt] = session.scalars(select(ChargeAttempt)).all()
    assert attempt.outcome == ChargeOutcome.SUCCEEDED
    assert attempt.stripe_payment_intent_id == intent["id"]
    assert stripe_server.request_count == 1


def test_missing_invoice_fails_permanently(broker):
    with pytest.raises(PermanentJobError, match="platform invoice 424242 not found"):
        charge(424242)


def test_billing_run_skips_tenants_created_later(worker):
    [old_tenant] = create_tenants(1)
    [new_tenant] = create_tenants(1, created_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))

    enqueue("billing_run", {"period": "2026-10"})
    wait_for(all_jobs_finished)

    billed = [invoice.tenant_id for invoice in invoices()]
    assert billed == [old_tenant]
    assert get_job(f"bill-tenant:{new_tenant}:2026-10") is None


def test_bill_tenant_created_after_period_skipped(broker):
    [tenant_id] = create_tenants(
        1, created_at=dt.datetime(2026, 10, 31, 23, 59, tzinfo=dt.UTC)
    )

    october = bill_tenant(BillTenantParams(tenant_id=tenant_id, period="2026-10"))
    september = bill_tenant(BillTenantParams(tenant_id=tenant_id, period="2026-09"))

    assert october["created"] is True
    assert september == {
        "invoice_id": None,
        "skipped": "tenant was created after 2026-09 ended",
    }
    [invoice] = invoices()
    assert invoice.period_start == dt.date(2026, 10, 1)
