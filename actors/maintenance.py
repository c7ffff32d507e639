"""Ledger upkeep: re-sending jobs whose message was lost, and pruning old jobs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from typing import Any

from pydantic import Field

from actors.ledger import send_messages
from actors.registry import JobParams, job_type
from infra.db import transaction
from infra.redis import get_redis
from infra.settings import get_settings
from models.jobs import (
    Job,
    JobStatus,
    jobs_to_resend,
    prune_finished,
    touch_due_time,
)

logger = logging.getLogger(__name__)

SWEEP_BATCH = 1000
# A message fetched but not started for this many sweep periods is sent again.
STUCK_FACTOR = 10
PRUNE_BATCH = 5000


class ScheduledParams(JobParams):
    slot: str | None = Field(
        None, max_length=64, description="Schedule slot that triggered the run."
    )


@dataclasses.dataclass
class QueuedMessages:
    """Message ids in Redis: waiting in a queue list, or fetched by a worker."""

    waiting: set[str] = dataclasses.field(default_factory=set)
    fetched: set[str] = dataclasses.field(default_factory=set)
    unreadable: int = 0


def _dead_letter_unreadable(
    source: str, queue: str, redis_id: bytes, payload: bytes
) -> None:
    """Move an unreadable payload to the queue's dead letters.

    Dramatiq's consumer fails on such a payload, together with every message
    it fetched in the same batch. Dramatiq also requeues the payload whenever
    the worker that fetched it dies. So it leaves the queue for good, and the
    dead letters keep it for an operator to read.
    """
    client = get_redis()
    with client.pipeline(transaction=True) as pipe:
        pipe.zadd(f"{queue}.XQ", {redis_id: int(time.time() * 1000)})
        pipe.hset(f"{queue}.XQ.msgs", redis_id, payload)
        pipe.hdel(f"{source}.msgs", redis_id)
        pipe.lrem(source, 0, redis_id)
        pipe.execute()


def queued_messages(queue_names: set[str]) -> QueuedMessages:
    """Read which message ids Redis holds for these queues, and where.

    A payload hash contains every message of a queue that is ready, fetched or
    delayed, and the queue's list contains the ids not fetched yet. A fetched
    message stays in the hash until its worker acknowledges it, and also when
    that worker died or its consumer failed on an unreadable neighbour.
    """
    namespace = get_settings().dramatiq_namespace
    client = get_redis()
    found = QueuedMessages()
    for queue in queue_names:
        for suffix in ("", ".DQ"):
            base = f"{namespace}:{queue}{suffix}"
            payloads = client.hgetall(f"{base}.msgs")
            listed = set(client.lrange(base, 0, -1))
            for redis_id, payload in payloads.items():
                try:
                    message_id = json.loads(payload)["message_id"]
                except (ValueError, KeyError, TypeError):
                    _dead_letter_unreadable(
                        base, f"{namespace}:{queue}", redis_id, payload
                    )
                    found.unreadable += 1
                    continue
                if redis_id in listed:
                    found.waiting.add(message_id)
                else:
                    found.fetched.add(message_id)
    return found


@job_type(
    queue="maintenance",
    params=ScheduledParams,
    time_limit_ms=120_000,
    max_retries=0,
    natural_key=lambda p: f"sweep-jobs:{p.slot}",
)
def sweep_jobs(params: ScheduledParams) -> dict[str, Any]:
    """Re-send overdue jobs whose message was lost or is stuck.

    A pending job is re-sent when its message is missing from Redis, after a
    Redis flush or restart or a crash between commit and send. It is also
    re-sent when a worker fetched it and has not started it for STUCK_FACTOR
    sweep periods, because the worker died or its consumer failed on an
    unreadable message. A running job with an expired lease is always re-sent,
    because its message may sit with a dead worker for many minutes before
    Dramatiq requeues it.
    Duplicate messages are harmless: only one of them can claim the job.
    """
    settings = get_settings()
    stuck_before = dt.datetime.now(dt.UTC) - dt.timedelta(
        seconds=settings.sweep_after_s * STUCK_FACTOR
    )
    with transaction() as session:
        overdue = jobs_to_resend(
            session, stale_after_s=settings.sweep_after_s, limit=SWEEP_BATCH
        )
        if not overdue:
            return {"overdue": 0, "resent": 0}
        queued = queued_messages({job.queue for job in overdue})
        to_send = [
            job
            for job in overdue
            if job.status == JobStatus.RUNNING
            or _is_lost_or_stuck(job, queued, stuck_before=stuck_before)
        ]
        touch_due_time(session, [job.id for job in to_send])

    resent = send_messages(to_send)
    if queued.unreadable:
        logger.warning(
            "unreadable message payloads moved to dead letters: %d", queued.unreadable
        )
    if resent:
        logger.warning(
            "jobs re-sent because their message was lost or stuck: %d", resent
        )
    return {"overdue": len(overdue), "resent": resent}


def _is_lost_or_stuck(
    job: Job, queued: QueuedMessages, *, stuck_before: dt.datetime
) -> bool:
    job_id = str(job.id)
    if job_id in queued.waiting:
        return False
    if job_id in queued.fetched:
        return job.next_attempt_at < stuck_before
    return True


@job_type(
    queue="maintenance",
    params=ScheduledParams,
    time_limit_ms=10 * 60_000,
    max_retries=3,
    natural_key=lambda p: f"prune-jobs:{p.slot}",
)
def prune_jobs(params: ScheduledParams) -> dict[str, Any]:
    """Delete finished jobs older than JOB_RETENTION_DAYS, in batches."""
    retention_days = get_settings().job_retention_days
    deleted = 0
    while True:
        with transaction() as session:
            batch = prune_finished(
                session, older_than_days=retention_days, limit=PRUNE_BATCH
            )
        deleted += batch
        if batch < PRUNE_BATCH:
            break
    logger.info("pruned %d finished jobs older than %d days", deleted, retention_days)
    return {"deleted": deleted}
