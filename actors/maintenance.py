"""Ledger upkeep: re-sending jobs whose message was lost, and pruning old jobs."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import Field

from actors.ledger import send_messages
from actors.registry import JobParams, job_type
from infra.db import transaction
from infra.redis import get_redis
from infra.settings import get_settings
from models.jobs import JobStatus, jobs_to_resend, prune_finished, touch_due_time

logger = logging.getLogger(__name__)

SWEEP_BATCH = 1000
PRUNE_BATCH = 5000


class ScheduledParams(JobParams):
    slot: str | None = Field(None, description="Schedule slot that triggered the run.")


def queued_message_ids(queue_names: set[str]) -> set[str]:
    """Return the message ids stored in Redis for these queues, ready or delayed.

    The payload hashes contain every message that is ready, in flight or
    delayed. A job whose id is in none of them has lost its message.
    """
    settings = get_settings()
    client = get_redis()
    found: set[str] = set()
    for queue in queue_names:
        for suffix in ("", ".DQ"):
            key = f"{settings.dramatiq_namespace}:{queue}{suffix}.msgs"
            for payload in client.hvals(key):
                try:
                    found.add(json.loads(payload)["message_id"])
                except (ValueError, KeyError, TypeError):
                    logger.warning("unreadable message payload in %s", key)
    return found


@job_type(
    queue="maintenance",
    params=ScheduledParams,
    time_limit_ms=120_000,
    max_retries=0,
    natural_key=lambda p: f"sweep-jobs:{p.slot}",
)
def sweep_jobs(params: ScheduledParams) -> dict[str, Any]:
    """Re-send overdue jobs whose message is no longer in Redis.

    Pending jobs are re-sent only when their message is missing (a Redis flush
    or restart, or a crash between commit and send). Running jobs with an
    expired lease are always re-sent, because their message may sit in the ack
    set of a dead worker for many minutes before Dramatiq requeues it.
    """
    settings = get_settings()
    resent = 0
    with transaction() as session:
        overdue = jobs_to_resend(
            session, stale_after_s=settings.sweep_after_s, limit=SWEEP_BATCH
        )
        if overdue:
            present = queued_message_ids({job.queue for job in overdue})
            lost = [
                job
                for job in overdue
                if job.status == JobStatus.RUNNING or str(job.id) not in present
            ]
            touch_due_time(session, [job.id for job in lost])
    if overdue:
        resent = send_messages(lost)
    if resent:
        logger.warning("re-sent %d jobs whose message was lost or stalled", resent)
    return {"overdue": len(overdue), "resent": resent}


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
