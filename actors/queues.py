"""Queue depths read from the Redis broker's keys, for the operator view."""

from __future__ import annotations

import json
import time
from typing import Any

from actors.registry import QUEUES
from infra.redis import get_redis
from infra.settings import get_settings


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
