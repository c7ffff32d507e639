"""The job ledger against real PostgreSQL and Redis: dedup, fencing, sweeping."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import pytest
from sqlalchemy import select, text, update

from actors.ledger import enqueue
from actors.maintenance import ScheduledParams, sweep_jobs
from infra.db import transaction
from infra.redis import get_redis
from models.jobs import DedupKeyConflict, Job, JobStatus, claim, finish
from tests.conftest import run_worker_until, wait_for
from tests.factories import (
    all_jobs_finished,
    create_tenants,
    database_rejects,
    get_job,
    invoices,
)

NAMESPACE = "vetqueue-test"


def queued_payloads(queue: str) -> int:
    return get_redis().hlen(f"{NAMESPACE}:{queue}.msgs")


def dead_letters(queue: str) -> int:
    return get_redis().zcard(f"{NAMESPACE}:{queue}.XQ")


@pytest.mark.parametrize("round_number", range(5))
def test_enqueue_race_one_job(broker, round_number):
    key = f"race-{round_number}"
    barrier = threading.Barrier(50)

    def enqueue_once(_: int):
        barrier.wait()
        return enqueue("billing_run", {"period": "2026-10"}, dedup_key=key)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(enqueue_once, range(50)))

    assert sum(result.created for result in results) == 1
    assert len({result.job.id for result in results}) == 1
    assert queued_payloads("billing") == 1


def test_enqueue_same_key_other_params_conflicts(broker):
    enqueue("billing_run", {"period": "2026-10"}, dedup_key="monthly")

    with pytest.raises(DedupKeyConflict) as caught:
        enqueue("billing_run", {"period": "2026-09"}, dedup_key="monthly")

    assert "monthly" in str(caught.value)
    assert queued_payloads("billing") == 1


def test_enqueue_existing_key_returns_job(broker):
    first = enqueue("billing_run", {"period": "2026-10"})

    second = enqueue("billing_run", {"period": "2026-10"})

    assert second.created is False
    assert second.job.id == first.job.id
    assert first.job.dedup_key == "billing-run:2026-10"


def test_enqueue_in_rolled_back_session_sends_nothing(broker):
    with pytest.raises(RuntimeError), transaction() as session:
        enqueue("billing_run", {"period": "2026-10"}, session=session)
        raise RuntimeError("abort the surrounding transaction")

    assert get_job("billing-run:2026-10") is None
    assert queued_payloads("billing") == 0


@pytest.mark.parametrize("round_number", range(3))
def test_overlapping_billing_runs_one_invoice_each(broker, worker, round_number):
    tenant_ids = create_tenants(30)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(
            pool.map(
                lambda key: enqueue(
                    "billing_run", {"period": "2026-10"}, dedup_key=key
                ),
                ["run-a", "run-b"],
            )
        )
    wait_for(all_jobs_finished, timeout_s=60)

    billed = [invoice.tenant_id for invoice in invoices()]
    assert sorted(billed) == sorted(tenant_ids)
    assert all(invoice.status.value == "paid" for invoice in invoices())


def test_claim_skips_live_lease(database, broker):
    job = enqueue("billing_run", {"period": "2026-10"}).job

    with transaction() as session:
        first = claim(session, job_id=job.id, lease_s=60)
    with transaction() as session:
        second = claim(session, job_id=job.id, lease_s=60)

    assert first.started
    assert not second.started
    assert second.reason == "running under a live lease"


def test_finish_fenced_after_takeover(database, broker):
    job = enqueue("billing_run", {"period": "2026-10"}).job
    with transaction() as session:
        first = claim(session, job_id=job.id, lease_s=0.01)
    time.sleep(0.05)
    with transaction() as session:
        second = claim(session, job_id=job.id, lease_s=60)

    with transaction() as session:
        stale = finish(
            session, job_id=job.id, attempt=first.attempt, status=JobStatus.SUCCEEDED
        )
    with transaction() as session:
        current = finish(
            session, job_id=job.id, attempt=second.attempt, status=JobStatus.FAILED
        )

    assert second.deaths == 1
    assert stale is False
    assert current is True
    assert get_job(job.dedup_key).status == JobStatus.FAILED


def test_repeated_worker_deaths_fail_job(broker):
    create_tenants(1)
    job = enqueue("billing_run", {"period": "2026-10"}, dedup_key="dies").job
    get_redis().flushdb()
    # Each claim stands for a worker that took the job and died: its lease
    # expires, so the next claim counts one more death.
    for _ in range(3):
        with transaction() as session:
            claim(session, job_id=job.id, lease_s=0.01)
        time.sleep(0.05)

    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        sweep_jobs(ScheduledParams(slot="deaths"))
        failed = wait_for(
            lambda: get_job("dies").status == JobStatus.FAILED and get_job("dies"),
            timeout_s=20,
        )
        wait_for(lambda: dead_letters("billing") == 1, timeout_s=10)
    finally:
        worker.stop()

    assert failed.deaths == 3
    assert "lease expired 3 times" in failed.last_error
    assert invoices() == []


def send_malformed_job(broker: dramatiq.Broker, dedup_key: str) -> None:
    """Add a ledger row with params its job type rejects, and send its message."""
    job_id = uuid.uuid4()
    params = {"tenant_id": "not a number", "period": "2026-10"}
    with transaction() as session:
        session.add(
            Job(
                id=job_id,
                type="bill_tenant",
                params=params,
                dedup_key=dedup_key,
                queue="billing",
                status=JobStatus.ENQUEUED,
            )
        )
    message = dramatiq.Message(
        queue_name="billing",
        actor_name="bill_tenant",
        args=(),
        kwargs=params,
        options={},
        message_id=str(job_id),
        message_timestamp=int(time.time() * 1000),
    )
    broker.enqueue(message)


def test_malformed_params_dead_lettered_once(broker, worker):
    send_malformed_job(broker, "malformed")
    wait_for(lambda: dead_letters("billing") == 1, timeout_s=15)
    time.sleep(1)

    job = get_job("malformed")
    assert job.status == JobStatus.FAILED
    assert job.attempts == 1
    assert "MalformedMessage" in job.last_error
    assert "tenant_id" in job.last_error
    assert get_redis().zcard(f"{NAMESPACE}:billing.DQ") == 0


def test_message_without_ledger_row_recorded(broker, worker):
    actor = broker.get_actor("bill_tenant")

    message = actor.send(tenant_id=1, period="2026-10")
    wait_for(lambda: dead_letters("billing") == 1, timeout_s=15)

    job = wait_for(lambda: get_job(f"message:{message.message_id}"), timeout_s=5)
    assert job.status == JobStatus.FAILED
    assert "no ledger row" in job.last_error


def test_redis_flush_loses_no_job(broker):
    tenant_ids = create_tenants(20)
    enqueue("billing_run", {"period": "2026-10"})
    fanout_worker = dramatiq.Worker(broker, worker_threads=2, queues={"billing"})
    fanout_worker.start()
    wait_for(lambda: queued_payloads("charges") >= 20, timeout_s=30)
    fanout_worker.stop()

    get_redis().flushdb()
    assert queued_payloads("charges") == 0
    time.sleep(1.2)
    summary = sweep_jobs(ScheduledParams(slot="after-flush"))
    run_worker_until(broker, all_jobs_finished, timeout_s=60)

    assert summary["resent"] >= 20
    assert sorted(invoice.tenant_id for invoice in invoices()) == sorted(tenant_ids)
    assert all(invoice.status.value == "paid" for invoice in invoices())


def test_retry_records_next_attempt(broker, worker, db):
    create_tenants(1)
    # bill_tenant fails with a database error, which Dramatiq retries.
    with database_rejects(
        table="platform_invoices", event="INSERT", message="invoice writes rejected"
    ):
        enqueue("bill_tenant", {"tenant_id": 1, "period": "2026-10"})
        retrying = wait_for(
            lambda: (
                (job := get_job("bill-tenant:1:2026-10"))
                and job.status == JobStatus.RETRYING
                and job
            ),
            timeout_s=20,
        )

    assert "invoice writes rejected" in retrying.last_error
    assert retrying.to_dict()["next_attempt_at"] is not None
    done = wait_for(
        lambda: get_job("bill-tenant:1:2026-10").status == JobStatus.SUCCEEDED,
        timeout_s=30,
    )
    assert done
    assert len(invoices()) == 1


def test_sweep_leaves_queued_messages_alone(broker):
    enqueue("billing_run", {"period": "2026-10"})
    with transaction() as session:
        session.execute(
            update(Job).values(next_attempt_at=text("now() - interval '1 hour'"))
        )

    summary = sweep_jobs(ScheduledParams(slot="x"))

    assert summary == {"overdue": 1, "resent": 0}
    assert queued_payloads("billing") == 1


def test_unknown_actor_recorded_failed(broker, worker):
    job_id = uuid.uuid4()
    with transaction() as session:
        session.add(
            Job(
                id=job_id,
                type="retired_actor",
                params={},
                dedup_key="retired",
                queue="billing",
                status=JobStatus.ENQUEUED,
            )
        )
    message = dramatiq.Message(
        queue_name="billing",
        actor_name="retired_actor",
        args=(),
        kwargs={},
        options={},
        message_id=str(job_id),
        message_timestamp=int(time.time() * 1000),
    )

    broker.enqueue(message)
    wait_for(lambda: dead_letters("billing") == 1, timeout_s=15)

    job = wait_for(
        lambda: get_job("retired").status == JobStatus.FAILED and get_job("retired"),
        timeout_s=5,
    )
    assert "retired_actor" in job.last_error


def test_claim_failure_sends_message_again(broker, worker):
    [tenant_id] = create_tenants(1)
    # The database rejects moving jobs to running, so the claim itself fails.
    with database_rejects(
        table="jobs",
        event="UPDATE",
        condition="NEW.status = 'running'",
        message="job claims rejected",
    ):
        enqueue("bill_tenant", {"tenant_id": tenant_id, "period": "2026-10"})
        wait_for(lambda: get_redis().hlen(f"{NAMESPACE}:billing.DQ.msgs") == 1)
        unclaimed = get_job(f"bill-tenant:{tenant_id}:2026-10")

    wait_for(all_jobs_finished, timeout_s=30)

    assert unclaimed.status == JobStatus.ENQUEUED
    assert unclaimed.attempts == 0
    assert len(invoices()) == 1


def test_sweep_resends_stuck_fetched_message(broker):
    enqueue("billing_run", {"period": "2026-10"})
    # Take the id off the ready list as a worker's fetch does, and leave the
    # payload, as a worker that died before acknowledging it would.
    get_redis().lpop(f"{NAMESPACE}:billing")

    with transaction() as session:
        session.execute(
            update(Job).values(next_attempt_at=text("now() - interval '5 seconds'"))
        )
    recent = sweep_jobs(ScheduledParams(slot="recent"))
    with transaction() as session:
        session.execute(
            update(Job).values(next_attempt_at=text("now() - interval '1 hour'"))
        )
    stuck = sweep_jobs(ScheduledParams(slot="stuck"))

    assert recent == {"overdue": 1, "resent": 0}
    assert stuck == {"overdue": 1, "resent": 1}
    assert get_redis().llen(f"{NAMESPACE}:billing") == 1


def test_sweep_dead_letters_unreadable_payload(broker):
    enqueue("billing_run", {"period": "2026-10"})
    client = get_redis()
    client.hset(f"{NAMESPACE}:billing.msgs", "garbled", "not json")
    client.rpush(f"{NAMESPACE}:billing", "garbled")
    with transaction() as session:
        session.execute(
            update(Job).values(next_attempt_at=text("now() - interval '5 seconds'"))
        )

    summary = sweep_jobs(ScheduledParams(slot="garbled"))

    assert summary == {"overdue": 1, "resent": 0}
    assert dead_letters("billing") == 1
    assert client.hget(f"{NAMESPACE}:billing.XQ.msgs", "garbled") == b"not json"
    assert not client.hexists(f"{NAMESPACE}:billing.msgs", "garbled")
    assert b"garbled" not in client.lrange(f"{NAMESPACE}:billing", 0, -1)
    assert queued_payloads("billing") == 1


def test_lost_outcomes_rerun_without_second_charge(broker, stripe_server):
    tenant_ids = create_tenants(3)
    enqueue("billing_run", {"period": "2026-10"})
    run_worker_until(broker, all_jobs_finished, timeout_s=60)
    assert len(stripe_server.payment_intents()) == 3

    # A PostgreSQL crash can lose a success that the ledger recorded without
    # waiting for the disk. The job is then as its claim left it: running,
    # with no message in Redis. These jobs stand in for such a job.
    with transaction() as session:
        session.execute(
            update(Job)
            .where(Job.type.in_(["bill_tenant", "charge_invoice"]))
            .values(
                status=JobStatus.RUNNING,
                finished_at=None,
                lease_expires_at=text("now() - interval '1 second'"),
            )
        )
    summary = sweep_jobs(ScheduledParams(slot="lost-outcomes"))
    run_worker_until(broker, all_jobs_finished, timeout_s=60)

    assert summary["resent"] == 6
    with transaction() as session:
        rerun = session.scalars(
            select(Job).where(Job.type.in_(["bill_tenant", "charge_invoice"]))
        ).all()
    assert [job.status for job in rerun] == [JobStatus.SUCCEEDED] * 6
    assert [job.attempts for job in rerun] == [2] * 6
    assert [job.deaths for job in rerun] == [1] * 6
    assert sorted(invoice.tenant_id for invoice in invoices()) == sorted(tenant_ids)
    assert all(invoice.status.value == "paid" for invoice in invoices())
    assert len(stripe_server.payment_intents()) == 3


@pytest.fixture
def commit_modes(database):
    """Record the synchronous_commit setting of every update of a job's status."""
    statements = [
        "CREATE TABLE commit_modes (status text, synchronous_commit text)",
        """CREATE FUNCTION record_commit_mode() RETURNS trigger AS $$
        BEGIN
            INSERT INTO commit_modes
            VALUES (NEW.status::text, current_setting('synchronous_commit'));
            RETURN NEW;
        END $$ LANGUAGE plpgsql""",
        """CREATE TRIGGER record_commit_mode AFTER UPDATE OF status ON jobs
        FOR EACH ROW EXECUTE FUNCTION record_commit_mode()""",
    ]
    with transaction() as session:
        for statement in statements:
            session.execute(text(statement))

    def read() -> set[tuple[str, str]]:
        with transaction() as session:
            return set(session.execute(text("SELECT * FROM commit_modes")).all())

    yield read
    with transaction() as session:
        session.execute(text("DROP TRIGGER record_commit_mode ON jobs"))
        session.execute(text("DROP FUNCTION record_commit_mode()"))
        session.execute(text("DROP TABLE commit_modes"))


def test_only_failed_outcomes_wait_for_disk(broker, worker, commit_modes):
    enqueue("billing_run", {"period": "2026-10"}, dedup_key="fine")
    send_malformed_job(broker, "malformed")
    wait_for(lambda: get_job("fine").status == JobStatus.SUCCEEDED, timeout_s=15)
    wait_for(lambda: get_job("malformed").status == JobStatus.FAILED, timeout_s=15)

    assert commit_modes() == {
        ("running", "off"),
        ("succeeded", "off"),
        ("failed", "on"),
    }


def test_claim_failure_uses_no_retry(broker, worker):
    # sweep_jobs has no retries, so a failed claim must not count as one.
    with database_rejects(
        table="jobs",
        event="UPDATE",
        condition="NEW.status = 'running'",
        message="job claims rejected",
    ):
        enqueue("sweep_jobs", {"slot": "claims-rejected"})
        wait_for(lambda: get_redis().hlen(f"{NAMESPACE}:maintenance.DQ.msgs") == 1)

    job = wait_for(
        lambda: (
            get_job("sweep-jobs:claims-rejected").status == JobStatus.SUCCEEDED
            and get_job("sweep-jobs:claims-rejected")
        ),
        timeout_s=30,
    )
    assert job.attempts == 1
    assert dead_letters("maintenance") == 0


def ledger_backends() -> list[int]:
    with transaction() as session:
        return list(
            session.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = "
                    "'vetqueue-ledger' AND datname = current_database()"
                )
            )
        )


@pytest.mark.parametrize("round_number", range(3))
def test_killed_ledger_connections_cost_no_retry(broker, caplog, round_number):
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        for index in range(8):
            enqueue("sweep_jobs", {"slot": f"warm-{round_number}-{index}"})
        wait_for(all_jobs_finished, timeout_s=30)
        killed = ledger_backends()
        with transaction() as session:
            session.execute(
                text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) AS pid"),
                {"pids": killed},
            )
        wait_for(lambda: not set(ledger_backends()) & set(killed))

        # These jobs have no retries, so a claim or finish on a dead
        # connection would fail them.
        for index in range(8):
            enqueue("sweep_jobs", {"slot": f"after-{round_number}-{index}"})
        wait_for(all_jobs_finished, timeout_s=30)
    finally:
        worker.stop()

    assert killed
    # The statements ran again on new connections, so no message waited.
    assert not [
        record
        for record in caplog.records
        if record.getMessage().startswith("claiming the job in the ledger failed")
    ]
    with transaction() as session:
        jobs = session.scalars(select(Job)).all()
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert {job.attempts for job in jobs} == {1}
    assert dead_letters("maintenance") == 0
