"""Auto-charge through the Stripe test server: idempotency, faults and dunning."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text, update

from actors.charging import (
    ChargeDueInvoicesParams,
    charge_due_invoices,
    idempotency_key,
)
from actors.ledger import enqueue
from infra.db import transaction
from infra.stripe_client import get_stripe
from models.billing import (
    ChargeAttempt,
    InvoiceStatus,
    PlatformInvoice,
    rearm_awaiting_invoices,
)
from models.jobs import JobStatus
from models.notifications import Notification
from models.tenants import Tenant, TenantStatus
from tests.conftest import wait_for
from tests.factories import (
    all_jobs_finished,
    create_tenants,
    database_rejects,
    get_job,
    invoices,
)


def bill(tenant_id: int, period: str = "2026-10") -> None:
    enqueue("bill_tenant", {"tenant_id": tenant_id, "period": period})


def charge_attempts() -> list[ChargeAttempt]:
    with transaction() as session:
        return list(session.scalars(select(ChargeAttempt).order_by(ChargeAttempt.id)))


def make_due(invoice_id: int) -> None:
    """Move an invoice's next attempt into the past, as if the days had passed."""
    with transaction() as session:
        session.execute(
            update(PlatformInvoice)
            .where(PlatformInvoice.id == invoice_id)
            .values(next_attempt_at=text("now() - interval '1 minute'"))
        )


def test_charge_success_records_payment(worker, stripe_server):
    [tenant_id] = create_tenants(1)

    bill(tenant_id)
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    [intent] = stripe_server.payment_intents()
    [attempt] = charge_attempts()
    assert invoice.status.value == "paid"
    assert invoice.amount_due_cents == 0
    assert invoice.stripe_payment_intent_id == intent["id"]
    assert intent["amount"] == 4900
    assert intent["metadata"]["invoice_id"] == str(invoice.id)
    assert attempt.idempotency_key == idempotency_key(invoice.id, 1)
    assert attempt.outcome.value == "succeeded"


def test_connection_dropped_after_charge_charges_once(worker, stripe_server):
    [tenant_id] = create_tenants(1)
    stripe_server.add_faults([{"kind": "drop_after_charge"}])

    bill(tenant_id)
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    assert invoice.status.value == "paid"
    assert len(stripe_server.payment_intents()) == 1
    assert stripe_server.request_count == 2
    assert invoice.stripe_payment_intent_id == stripe_server.payment_intents()[0]["id"]


@pytest.mark.parametrize(
    "faults",
    [
        [{"kind": "status", "status": 500}],
        [{"kind": "status", "status": 429}],
        [
            {"kind": "status", "status": 503},
            {"kind": "status", "status": 429},
            {"kind": "drop_before"},
        ],
    ],
    ids=["500", "429", "503-429-drop"],
)
def test_transient_errors_back_off_then_pay(worker, stripe_server, faults):
    [tenant_id] = create_tenants(1)
    stripe_server.add_faults(faults)

    bill(tenant_id)
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    assert invoice.status.value == "paid"
    assert len(stripe_server.payment_intents()) == 1
    assert stripe_server.request_count == len(faults) + 1
    assert len(charge_attempts()) == 1


def test_slow_stripe_times_out_then_replays(worker, stripe_server):
    [tenant_id] = create_tenants(1)
    # Longer than the client's 2 s read timeout: the first call times out while
    # the server still charges, and the retry with the same key gets a replay
    # (or 409 while the first request is still in flight).
    stripe_server.add_faults([{"kind": "delay", "seconds": 3}])

    bill(tenant_id)
    wait_for(all_jobs_finished, timeout_s=40)

    [invoice] = invoices()
    assert invoice.status.value == "paid"
    assert len(stripe_server.payment_intents()) == 1


def test_hard_decline_not_retried(worker, stripe_server):
    [tenant_id] = create_tenants(
        1, payment_methods=["pm_card_chargeDeclinedExpiredCard"]
    )

    bill(tenant_id)
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    [attempt] = charge_attempts()
    assert stripe_server.request_count == 1
    assert invoice.status.value == "payment_failed"
    assert invoice.awaiting_payment_method is True
    assert invoice.next_attempt_at is None
    assert attempt.decline_code == "expired_card"
    assert charge_due_invoices(ChargeDueInvoicesParams(slot="t")) == {"enqueued": 0}


def test_soft_decline_schedules_next_attempt(worker, stripe_server):
    [tenant_id] = create_tenants(
        1, payment_methods=["pm_card_chargeDeclinedInsufficientFunds"]
    )

    bill(tenant_id)
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    assert invoice.status.value == "payment_failed"
    assert invoice.last_decline_code == "insufficient_funds"
    assert abs((invoice.next_attempt_at - expected).total_seconds()) < 60
    with transaction() as session:
        [note] = session.scalars(select(Notification)).all()
    assert note.tenant_id == tenant_id
    assert "insufficient_funds" in note.message


def test_dunning_ends_uncollectible(worker, stripe_server):
    [tenant_id] = create_tenants(
        1, payment_methods=["pm_card_chargeDeclinedInsufficientFunds"]
    )
    bill(tenant_id)
    wait_for(all_jobs_finished)

    # The default schedule retries after 3, 5 and 7 days: three more attempts.
    for attempt_number in (2, 3, 4):
        [invoice] = invoices()
        make_due(invoice.id)
        result = charge_due_invoices(ChargeDueInvoicesParams(slot=str(attempt_number)))
        assert result == {"enqueued": 1}
        wait_for(all_jobs_finished)

    [invoice] = invoices()
    keys = [attempt.idempotency_key for attempt in charge_attempts()]
    with transaction() as session:
        tenant = session.get(Tenant, tenant_id)
    assert invoice.status.value == "uncollectible"
    assert invoice.attempt_count == 4
    assert len(set(keys)) == 4
    assert tenant.status.value == "past_due"
    assert stripe_server.request_count == 4


def test_rejected_outcome_write_charges_once(worker, stripe_server):
    [tenant_id] = create_tenants(1)
    with database_rejects(
        table="charge_attempts",
        event="UPDATE",
        condition="NEW.outcome <> 'pending'",
        message="charge outcome writes rejected",
    ):
        bill(tenant_id)
        wait_for(
            lambda: (
                (job := get_job("charge-invoice:1:1"))
                and job.status == JobStatus.RETRYING
            ),
            timeout_s=30,
        )
        charged_while_rejected = len(stripe_server.payment_intents())
    wait_for(all_jobs_finished, timeout_s=30)

    [invoice] = invoices()
    assert charged_while_rejected == 1
    assert invoice.status.value == "paid"
    assert len(stripe_server.payment_intents()) == 1
    assert stripe_server.request_count >= 2


def use_first_key_elsewhere() -> None:
    """Send invoice 1's first idempotency key with other params.

    Another request would do that, and Stripe then rejects the invoice's
    first attempt.
    """
    get_stripe().v1.payment_intents.create(
        params={
            "amount": 100,
            "currency": "eur",
            "payment_method": "pm_card_visa",
            "confirm": True,
        },
        options={"idempotency_key": idempotency_key(1, 1)},
    )


def test_idempotency_mismatch_fails_job(worker, stripe_server):
    [tenant_id] = create_tenants(1)
    use_first_key_elsewhere()

    bill(tenant_id)
    wait_for(all_jobs_finished)

    job = get_job("charge-invoice:1:1")
    [invoice] = invoices()
    [attempt] = charge_attempts()
    assert job.status == JobStatus.FAILED
    assert job.attempts == 1
    assert "same parameters" in attempt.error
    assert "Stripe rejected the charge" in job.last_error
    assert attempt.outcome.value == "error"
    assert invoice.status.value == "payment_failed"
    assert len(stripe_server.payment_intents()) == 1


def test_processing_intent_not_recorded_paid(worker, stripe_server):
    [tenant_id] = create_tenants(1)
    stripe_server.add_faults([{"kind": "processing"}])

    bill(tenant_id)
    wait_for(all_jobs_finished)
    result = charge_due_invoices(ChargeDueInvoicesParams(slot="after-processing"))

    job = get_job("charge-invoice:1:1")
    [invoice] = invoices()
    [attempt] = charge_attempts()
    [intent] = stripe_server.declined_payment_intents()
    assert intent["status"] == "processing"
    assert job.status == JobStatus.FAILED
    assert job.attempts == 1
    assert f"PaymentIntent {intent['id']} is processing" in job.last_error
    assert attempt.outcome.value == "error"
    assert attempt.stripe_payment_intent_id == intent["id"]
    assert invoice.status.value == "payment_failed"
    assert invoice.awaiting_payment_method is True
    assert invoice.paid_at is None
    assert result == {"enqueued": 0}
    assert stripe_server.payment_intents() == []


def test_rejected_charge_waits_for_new_details(worker, stripe_server, client, operator):
    [tenant_id] = create_tenants(1)
    use_first_key_elsewhere()
    bill(tenant_id)
    wait_for(all_jobs_finished)
    failed = get_job("charge-invoice:1:1")
    assert failed.status == JobStatus.FAILED
    assert invoices()[0].awaiting_payment_method is True

    # Retrying the job must not report success: the attempt was rejected.
    response = client.post(f"/v1/jobs/{failed.id}/retry", headers=operator.headers)
    assert response.status_code == 202
    wait_for(all_jobs_finished)
    retried = get_job("charge-invoice:1:1")
    assert retried.status == JobStatus.FAILED
    assert "did not complete" in retried.last_error
    assert len(charge_attempts()) == 1

    # New Stripe details make the invoice due for a second attempt.
    response = client.patch(
        f"/v1/tenants/{tenant_id}",
        json={"stripe_customer_id": "cus_corrected"},
        headers=operator.headers,
    )
    assert response.status_code == 200
    result = charge_due_invoices(ChargeDueInvoicesParams(slot="after-fix"))
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    first, second = charge_attempts()
    assert result == {"enqueued": 1}
    assert first.outcome.value == "error"
    assert second.outcome.value == "succeeded"
    assert second.idempotency_key == idempotency_key(invoice.id, 2)
    assert invoice.status.value == "paid"
    assert invoice.awaiting_payment_method is False
    assert len(stripe_server.payment_intents()) == 2


def test_card_added_later_gets_charged(worker, stripe_server):
    [tenant_id] = create_tenants(1)
    with transaction() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant_id)
            .values(stripe_payment_method_id=None)
        )
    bill(tenant_id)
    wait_for(all_jobs_finished)
    [waiting] = invoices()

    with transaction() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant_id)
            .values(stripe_payment_method_id="pm_card_visa")
        )
        rearmed = rearm_awaiting_invoices(session, tenant_id=tenant_id)
    result = charge_due_invoices(ChargeDueInvoicesParams(slot="after-card"))
    wait_for(all_jobs_finished)

    [invoice] = invoices()
    assert waiting.awaiting_payment_method is True
    assert waiting.status.value == "open"
    assert rearmed == [invoice.id]
    assert result == {"enqueued": 1}
    assert invoice.status.value == "paid"
    assert len(stripe_server.payment_intents()) == 1


def test_payment_restores_past_due_tenant(worker, stripe_server):
    settled, still_owing = create_tenants(2)
    with transaction() as session:
        session.execute(update(Tenant).values(status=TenantStatus.PAST_DUE))
        session.add(
            PlatformInvoice(
                tenant_id=still_owing,
                period_start=dt.date(2026, 8, 1),
                amount_cents=4900,
                amount_due_cents=4900,
                currency="eur",
                status=InvoiceStatus.UNCOLLECTIBLE,
            )
        )

    bill(settled)
    bill(still_owing)
    wait_for(all_jobs_finished)

    with transaction() as session:
        statuses = {
            tenant.id: tenant.status for tenant in session.scalars(select(Tenant))
        }
    assert statuses[settled] == TenantStatus.ACTIVE
    assert statuses[still_owing] == TenantStatus.PAST_DUE
    assert len(stripe_server.payment_intents()) == 2
