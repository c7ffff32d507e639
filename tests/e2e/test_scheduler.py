"""Scheduler replicas racing for the same slots, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import sys

from sqlalchemy import select

from infra.db import transaction
from infra.redis import get_redis
from models.jobs import Job
from tests.conftest import wait_for

QUEUES = ("billing", "charges", "maintenance")


def schedule_jobs() -> list[Job]:
    with transaction() as session:
        return list(
            session.scalars(select(Job).where(Job.dedup_key.like("schedule:%")))
        )


def queued_messages() -> int:
    client = get_redis()
    return sum(client.hlen(f"vetqueue-test:{queue}.msgs") for queue in QUEUES)


def test_replicas_enqueue_each_slot_once(broker, spawn):
    replicas = [spawn(sys.executable, "-m", "scheduler") for _ in range(3)]

    wait_for(
        lambda: all("scheduler started" in replica.log() for replica in replicas),
        timeout_s=30,
    )
    wait_for(
        lambda: (
            {job.dedup_key.split(":")[1] for job in schedule_jobs()}
            >= {"billing-run", "charge-due-invoices", "sweep-jobs", "prune-jobs"}
        ),
        timeout_s=30,
    )
    for replica in replicas:
        replica.send_signal(signal.SIGTERM)
    exit_codes = [replica.wait(timeout=15) for replica in replicas]
    logs = [replica.log() for replica in replicas]

    jobs = schedule_jobs()
    assert exit_codes == [0, 0, 0]
    assert all("scheduler stopped" in log for log in logs)
    assert not any("Traceback" in log for log in logs)
    assert queued_messages() == len(jobs)
    billing = [job for job in jobs if job.type == "billing_run"]
    assert len(billing) == 1
    assert billing[0].dedup_key.startswith("schedule:billing-run:")


def test_invalid_setting_stops_start(spawn, monkeypatch):
    monkeypatch.setenv("STRIPE_MAX_CONCURRENCY", "zero")

    scheduler = spawn(sys.executable, "-m", "scheduler")
    exit_code = scheduler.wait(timeout=30)

    assert exit_code != 0
    assert "STRIPE_MAX_CONCURRENCY" in scheduler.log()
    assert "Traceback" not in scheduler.log()
