"""The global limit on concurrent Stripe calls, shared by every worker thread."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from actors.ledger import enqueue
from actors.stripe_calls import SlotLimiter, _limiter
from infra.redis import get_redis
from models.jobs import JobStatus
from tests.conftest import TEST_ENVIRONMENT, reconfigure, wait_for
from tests.factories import all_jobs_finished, create_tenants, get_job, invoices


@pytest.fixture
def stripe_limit(stripe_server) -> Iterator[None]:
    """Apply the test's limit settings, and restore the defaults afterwards."""
    yield
    reconfigure(
        STRIPE_MAX_CONCURRENCY="8",
        STRIPE_SLOT_WAIT_S=TEST_ENVIRONMENT["STRIPE_SLOT_WAIT_S"],
    )


def delayed_payloads(queue: str) -> list[dict]:
    raw = get_redis().hvals(f"vetqueue-test:{queue}.DQ.msgs")
    return [json.loads(payload) for payload in raw]


def test_limit_caps_concurrent_calls(broker, worker, stripe_server, stripe_limit):
    reconfigure(STRIPE_MAX_CONCURRENCY="2")
    stripe_server.set_latency(latency_ms=150)
    tenant_ids = create_tenants(12)

    for tenant_id in tenant_ids:
        enqueue("bill_tenant", {"tenant_id": tenant_id, "period": "2026-10"})
    wait_for(all_jobs_finished, timeout_s=60)

    assert stripe_server.max_concurrent_requests == 2
    assert len(stripe_server.payment_intents()) == 12
    assert {invoice.status.value for invoice in invoices()} == {"paid"}


def test_waiting_for_slot_defers_without_retry(
    broker, worker, stripe_server, stripe_limit
):
    reconfigure(STRIPE_MAX_CONCURRENCY="1", STRIPE_SLOT_WAIT_S="0.3")
    [tenant_id] = create_tenants(1)

    with _limiter().slot() as taken:
        assert taken
        enqueue("bill_tenant", {"tenant_id": tenant_id, "period": "2026-10"})
        deferred = wait_for(
            lambda: (
                (job := get_job("charge-invoice:1:1"))
                and job.status == JobStatus.ENQUEUED
                and job.attempts == 1
                and job
            ),
            timeout_s=20,
        )
        [message] = delayed_payloads("charges")

    assert "every Stripe call slot is taken" in deferred.last_error
    assert stripe_server.request_count == 0
    assert "retries" not in message["options"]
    wait_for(lambda: invoices()[0].status.value == "paid", timeout_s=30)
    assert get_job("charge-invoice:1:1").attempts == 2


def test_slot_of_killed_holder_expires(broker):
    limiter = SlotLimiter(get_redis(), "vetqueue-test:slots", limit=1, ttl_ms=300)
    # A holder that never leaves its block, as a worker killed mid-call.
    abandoned = limiter.slot()
    assert abandoned.__enter__() is True

    with limiter.slot() as while_held:
        pass
    time.sleep(0.4)
    with limiter.slot() as after_expiry:
        pass

    assert while_held is False
    assert after_expiry is True
