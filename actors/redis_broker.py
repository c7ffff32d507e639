"""A Redis broker that can send a batch of messages in one round trip.

Dramatiq's ``RedisBroker.enqueue`` runs its dispatch script once per message
and waits for each reply. A billing run sends hundreds of messages per page,
and in a busy worker process every one of those waits also means waiting to
get the GIL back from the other worker threads. ``enqueue_batch`` runs the
same script, with the same arguments, for every message of a batch through a
non-transactional Redis pipeline, so a batch costs one round trip. The
messages land in Redis exactly as ``enqueue`` would store them, so consumers
cannot tell the difference.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

# The dispatch script's housekeeping (requeueing messages of dead workers)
# runs on a random share of ordinary commands; batches leave it to those.
_NO_MAINTENANCE = 0


class BatchingRedisBroker(RedisBroker):
    """RedisBroker plus ``enqueue_batch`` for messages sent without a delay."""

    def enqueue_batch(self, messages: Sequence[dramatiq.Message]) -> None:
        """Send every message in one pipeline.

        Enqueue middleware hooks run for each message as in ``enqueue``.
        Raises the Redis client's error, and then any part of the batch may
        have reached Redis.
        """
        if not messages:
            return
        prepared = []
        for message in messages:
            message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
            self.emit_before("enqueue", message, None)
            prepared.append(message)

        dispatch = self.scripts["dispatch"]
        keys = [self.namespace]
        timestamp = current_millis()
        with self.client.pipeline(transaction=False) as pipe:
            for message in prepared:
                dispatch(
                    keys=keys,
                    args=[
                        "enqueue",
                        timestamp,
                        message.queue_name,
                        self.broker_id,
                        self.heartbeat_timeout,
                        self.dead_message_ttl,
                        _NO_MAINTENANCE,
                        self._max_unpack_size(),
                        message.options["redis_message_id"],
                        message.encode(),
                    ],
                    client=pipe,
                )
            pipe.execute()

        for message in prepared:
            self.emit_after("enqueue", message, None)
