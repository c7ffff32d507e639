"""Sends to Redis: the batch layout, a batch cut off midway, a silent server."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator

import dramatiq
import pytest
from sqlalchemy import func, select

from actors.ledger import SEND_BATCH_SIZE, JobRequest, enqueue_many
from actors.maintenance import ScheduledParams, sweep_jobs
from actors.redis_broker import BatchingRedisBroker
from infra.db import transaction
from infra.redis import connect, get_redis
from infra.settings import get_settings
from models.jobs import Job
from tests.conftest import run_worker_until, wait_for
from tests.factories import all_jobs_finished, create_tenants, invoices

NAMESPACE = "vetqueue-test"


def stored_messages(queue: str) -> list[dramatiq.Message]:
    """Decode a queue's messages in the order Redis will hand them out."""
    client = get_redis()
    redis_ids = client.lrange(f"{NAMESPACE}:{queue}", 0, -1)
    payloads = client.hmget(f"{NAMESPACE}:{queue}.msgs", redis_ids)
    return [dramatiq.Message.decode(payload) for payload in payloads]


def bill_requests(tenant_ids: list[int]) -> list[JobRequest]:
    """One bill_tenant request per tenant for October 2026, keyed as billing does."""
    return [
        JobRequest(
            params={"tenant_id": tenant_id, "period": "2026-10"},
            dedup_key=f"bill-tenant:{tenant_id}:2026-10",
        )
        for tenant_id in tenant_ids
    ]


def max_started(job_type: str) -> int:
    with transaction() as session:
        return session.scalar(
            select(func.max(Job.attempts)).where(Job.type == job_type)
        )


def test_batch_layout_matches_enqueue(broker):
    messages = [
        dramatiq.Message(
            queue_name="billing",
            actor_name="bill_tenant",
            args=(),
            kwargs={"tenant_id": index, "period": "2026-10"},
            options={},
        )
        for index in range(3)
    ]

    broker.enqueue(messages[0])
    broker.enqueue_batch(messages[1:])

    stored = stored_messages("billing")
    assert [m.message_id for m in stored] == [m.message_id for m in messages]
    for sent, in_redis in zip(messages, stored, strict=True):
        assert in_redis.kwargs == sent.kwargs
        assert in_redis.actor_name == sent.actor_name
        assert set(in_redis.options) == {"redis_message_id"}
    redis_ids = {m.options["redis_message_id"] for m in stored}
    assert len(redis_ids) == 3


def test_send_many_jobs_in_batches(broker, worker):
    tenant_ids = create_tenants(SEND_BATCH_SIZE + 37)
    requests = bill_requests(tenant_ids)

    results = enqueue_many("bill_tenant", requests)

    assert all(result.created for result in results)
    wait_for(all_jobs_finished, timeout_s=120)
    billed = sorted(invoice.tenant_id for invoice in invoices())
    assert billed == sorted(tenant_ids)
    assert max_started("bill_tenant") == 1


class CuttingProxy:
    """A loopback TCP proxy to Redis that cuts every connection short.

    It forwards ``cut_after`` bytes from the client, then closes both sides,
    so a pipeline written through it reaches Redis only in part, however
    often the client reconnects and sends it again.
    """

    def __init__(self, target: tuple[str, int], cut_after: int) -> None:
        self.target = target
        self.cut_after = cut_after
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(
                target=self._pipe,
                args=(client, upstream, self.cut_after),
                daemon=True,
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, None), daemon=True
            ).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        forwarded = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if limit is not None and forwarded + len(data) >= limit:
                    sink.sendall(data[: limit - forwarded])
                    break
                sink.sendall(data)
                forwarded += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


@pytest.fixture
def cut_broker(broker) -> Iterator[BatchingRedisBroker]:
    """Make a broker behind a cutting proxy the global one until the test ends."""
    url = urllib.parse.urlsplit(get_settings().redis_url)
    proxy = CuttingProxy((url.hostname, url.port or 6379), cut_after=40_000)
    proxied_url = url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    cut = BatchingRedisBroker(url=proxied_url, namespace=NAMESPACE)
    dramatiq.set_broker(cut)
    yield cut
    dramatiq.set_broker(broker)
    cut.close()
    proxy.close()


def test_cut_batch_resent_by_sweeper(broker, cut_broker, caplog):
    tenant_ids = create_tenants(300)
    requests = bill_requests(tenant_ids)

    with caplog.at_level(logging.WARNING, logger="actors.ledger"):
        results = enqueue_many("bill_tenant", requests)

    assert len(results) == 300
    assert "sending 300 messages" in caplog.text
    # The client sent the batch again on each reconnect, so the first
    # messages may be there more than once.
    arrived = {message.message_id for message in stored_messages("billing")}
    assert 0 < len(arrived) < 300

    dramatiq.set_broker(broker)
    time.sleep(1.2)
    summary = sweep_jobs(ScheduledParams(slot="after-cut"))
    assert summary["resent"] == 300 - len(arrived)
    run_worker_until(broker, all_jobs_finished, timeout_s=120)

    billed = sorted(invoice.tenant_id for invoice in invoices())
    assert billed == sorted(tenant_ids)
    assert max_started("bill_tenant") == 1


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A loopback port that accepts connections and never replies, as a hung Redis."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def hold() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)

    threading.Thread(target=hold, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for connection in accepted:
        connection.close()


def test_silent_redis_times_out(broker, silent_redis, caplog):
    tenant_ids = create_tenants(3)
    requests = bill_requests(tenant_ids)
    silent = BatchingRedisBroker(
        client=connect(f"redis://127.0.0.1:{silent_redis}/0"), namespace=NAMESPACE
    )
    dramatiq.set_broker(silent)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="actors.ledger"):
            batch = enqueue_many("bill_tenant", requests[:2])
            single = enqueue_many("bill_tenant", requests[2:])
    finally:
        dramatiq.set_broker(broker)
    elapsed_s = time.monotonic() - started

    assert all(result.created for result in batch + single)
    assert "sending 2 messages" in caplog.text
    assert "sending message failed" in caplog.text
    # REDIS_TIMEOUT_S is 2 in the tests, so each send gives up after about 2 s.
    assert elapsed_s < 8
