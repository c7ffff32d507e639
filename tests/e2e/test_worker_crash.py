"""A worker killed mid-charge: the charge is completed once, by the next worker."""

from __future__ import annotations

import os
import signal

from actors.ledger import enqueue
from actors.maintenance import ScheduledParams, sweep_jobs
from models.jobs import JobStatus
from tests.conftest import wait_for
from tests.e2e.conftest import worker_command
from tests.factories import create_tenants, get_job, invoices


def test_sigkill_during_charge_charges_once(broker, stripe_server, spawn):
    [tenant_id] = create_tenants(1)
    # The charge stays in flight for 1.5 s, inside the client's 2 s read
    # timeout, so the worker is killed while it waits for Stripe's response.
    stripe_server.add_faults([{"kind": "delay", "seconds": 1.5}])
    first = spawn(*worker_command("billing", "charges"))

    enqueue("bill_tenant", {"tenant_id": tenant_id, "period": "2026-10"})
    wait_for(lambda: stripe_server.request_count == 1, timeout_s=30)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    wait_for(lambda: len(stripe_server.payment_intents()) == 1, timeout_s=10)

    job = get_job("charge-invoice:1:1")
    assert job.status == JobStatus.RUNNING
    assert invoices()[0].status.value == "open"

    spawn(*worker_command("billing", "charges"))

    def swept_and_paid() -> bool:
        sweep_jobs(ScheduledParams(slot="recovery"))
        return invoices()[0].status.value == "paid"

    wait_for(swept_and_paid, timeout_s=60, interval_s=1)

    job = get_job("charge-invoice:1:1")
    assert len(stripe_server.payment_intents()) == 1
    assert stripe_server.request_count == 2
    assert job.status == JobStatus.SUCCEEDED
    assert job.deaths == 1
    assert (
        invoices()[0].stripe_payment_intent_id
        == (stripe_server.payment_intents()[0]["id"])
    )
