"""Queue depths and dead letters in the Redis broker's keys, for operators."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from actors.ledger import send_messages
from actors.registry import QUEUES
from infra.db import transaction
from infra.redis import get_redis
from infra.settings import get_settings
from models.jobs import Job, reset_failed

logger = logging.getLogger(__name__)


def queue_stats() -> list[dict[str, Any]]:
    """Return per-queue message counts and the age of the oldest ready message.

    Reads the Redis broker's layout (Dramatiq 2.2): ``<ns>:<queue>`` lists the
    ready message ids, oldest first, and ``.msgs`` contains the payloads of ready
    and fetched messages. ``.DQ`` is the delayed queue, read the same way, and
    ``.XQ`` is a sorted set of dead letters.
    """
    namespace = get_settings().dramatiq_namespace
    client = get_redis()
    now_ms = time.time() * 1000
    stats = []
    for queue in QUEUES:
        base = f"{namespace}:{queue}"
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(base)
            pipe.hlen(f"{base}.msgs")
            pipe.hlen(f"{base}.DQ.msgs")
            pipe.zcard(f"{base}.XQ")
            pipe.lindex(base, 0)
            ready, ready_or_fetched, delayed, dead, oldest_id = pipe.execute()

        oldest_age_s = None
        if oldest_id is not None:
            payload = client.hget(f"{base}.msgs", oldest_id)
            if payload is not None:
                enqueued_ms = json.loads(payload).get("message_timestamp")
                if enqueued_ms:
                    oldest_age_s = round(max(0.0, now_ms - enqueued_ms) / 1000, 3)
        stats.append(
            {
                "queue": queue,
                "ready": ready,
                "in_flight": max(0, ready_or_fetched - ready),
                "delayed": delayed,
                "dead_letters": dead,
                "oldest_ready_age_s": oldest_age_s,
            }
        )
    return stats


def requeue_dead_letters(queue: str, *, limit: int) -> dict[str, int]:
    """Send the failed jobs of up to ``limit`` dead letters again, oldest first.

    A dead letter whose ledger job is ``failed`` is reset to ``enqueued`` and
    sent as a new message. One whose job already left ``failed`` (retried
    through the API since), or was sent again earlier in this call, is only
    removed. One with no ledger job to run, such as a message that bypassed
    the ledger, stays for an operator to read.
    """
    namespace = get_settings().dramatiq_namespace
    client = get_redis()
    dead_key = f"{namespace}:{queue}.XQ"
    counts = {"requeued": 0, "removed": 0, "kept": 0}
    # A job with several dead letters is sent once. A worker may have run and
    # failed it again before its next letter is read, and that letter would
    # otherwise send it a second time.
    sent: set[uuid.UUID] = set()

    for redis_id in client.zrange(dead_key, 0, limit - 1):
        payload = client.hget(f"{dead_key}.msgs", redis_id)
        job_id = _job_id_of(payload)
        if job_id is None:
            outcome = "kept"
        elif job_id in sent:
            outcome = "removed"
        else:
            outcome = _requeue_job(job_id)
        if outcome == "requeued":
            sent.add(job_id)
        if outcome != "kept":
            with client.pipeline() as pipe:
                pipe.zrem(dead_key, redis_id)
                pipe.hdel(f"{dead_key}.msgs", redis_id)
                pipe.execute()
        counts[outcome] += 1

    if counts["requeued"] or counts["removed"]:
        logger.info("dead letters of %s: %s", queue, counts)
    return counts


def _job_id_of(payload: bytes | None) -> uuid.UUID | None:
    if payload is None:
        return None
    try:
        return uuid.UUID(json.loads(payload)["message_id"])
    except (ValueError, KeyError, TypeError):
        return None


def _requeue_job(job_id: uuid.UUID) -> str:
    with transaction() as session:
        job = reset_failed(session, job_id=job_id)
        if job is None:
            exists = session.get(Job, job_id) is not None
            return "removed" if exists else "kept"
    send_messages([job])
    return "requeued"
