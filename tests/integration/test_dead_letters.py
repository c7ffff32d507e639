"""Requeueing dead letters through the operator API."""

from __future__ import annotations

import pytest

from actors.ledger import enqueue
from infra.redis import get_redis
from models.jobs import JobStatus
from tests.conftest import wait_for
from tests.factories import create_tenants, get_job, invoices

URL = "/v1/ops/queues/{queue}/dead-letters/requeue"


def dead_letters(queue: str) -> int:
    return get_redis().zcard(f"vetqueue-test:{queue}.XQ")


def test_requeue_runs_failed_job_again(client, operator, worker, stripe_server):
    # Charging an invoice that does not exist yet fails for good.
    enqueue("charge_invoice", {"invoice_id": 1, "attempt_number": 1})
    wait_for(lambda: dead_letters("charges") == 1)
    [tenant_id] = create_tenants(1)
    enqueue("bill_tenant", {"tenant_id": tenant_id, "period": "2026-10"})
    wait_for(lambda: len(invoices()) == 1)

    response = client.post(URL.format(queue="charges"), headers=operator.headers)
    wait_for(lambda: invoices()[0].status.value == "paid")

    assert response.status_code == 200
    assert response.json == {"requeued": 1, "removed": 0, "kept": 0}
    assert dead_letters("charges") == 0
    assert get_job("charge-invoice:1:1").status == JobStatus.SUCCEEDED
    assert len(stripe_server.payment_intents()) == 1


def test_requeue_keeps_message_without_job(client, operator, broker, worker):
    broker.get_actor("bill_tenant").send(tenant_id=1, period="2026-10")
    wait_for(lambda: dead_letters("billing") == 1)

    response = client.post(URL.format(queue="billing"), headers=operator.headers)

    assert response.status_code == 200
    assert response.json == {"requeued": 0, "removed": 0, "kept": 1}
    assert dead_letters("billing") == 1


# The worker runs while letters are read, so a job sent again for its first
# letter can fail anew before its second letter is read. That race is rare,
# and several rounds give it more chances to happen.
@pytest.mark.parametrize("round_number", range(10))
def test_requeue_removes_letter_of_retried_job(client, operator, worker, round_number):
    enqueue("charge_invoice", {"invoice_id": 7, "attempt_number": 1})
    wait_for(lambda: dead_letters("charges") == 1)
    job = get_job("charge-invoice:7:1")
    retried = client.post(f"/v1/jobs/{job.id}/retry", headers=operator.headers)
    assert retried.status_code == 202
    wait_for(lambda: get_job("charge-invoice:7:1").status == JobStatus.FAILED)
    wait_for(lambda: dead_letters("charges") == 2)

    response = client.post(URL.format(queue="charges"), headers=operator.headers)

    assert response.json["requeued"] == 1
    assert response.json["removed"] == 1
    assert response.json["kept"] == 0


def test_requeue_unknown_queue_not_found(client, operator):
    response = client.post(URL.format(queue="exports"), headers=operator.headers)

    assert response.status_code == 404
    assert "exports" in response.json["error"]["message"]


def test_requeue_limit_validated(client, operator):
    response = client.post(
        URL.format(queue="charges") + "?limit=0", headers=operator.headers
    )

    assert response.status_code == 422
    assert response.json["error"]["details"]["fields"][0]["field"] == "limit"


def test_requeue_needs_operator(client, tenant_a):
    response = client.post(URL.format(queue="charges"), headers=tenant_a.headers)

    assert response.status_code == 403
