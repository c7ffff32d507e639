"""Calls to Stripe: a global concurrency limit, timeouts and transient-error retries."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import backoff
import redis
import stripe

from actors.errors import Defer
from infra.redis import get_redis
from infra.settings import get_settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StripeUnavailable(Exception):
    """Stripe kept failing with transient errors for the whole time budget."""


def is_transient(error: Exception) -> bool:
    """Tell whether a Stripe error may succeed when sent again with the same key.

    Connection errors, timeouts, 429 (including ``lock_timeout``), 5xx and 409
    ``idempotency_key_in_use`` are transient. Declines, invalid requests,
    authentication and idempotency mismatches are not, and neither are
    connection errors that the HTTP client marks as not worth retrying (a
    certificate that failed to verify, a proxy that rejected its credentials).
    """
    if isinstance(error, stripe.APIConnectionError):
        return error.should_retry
    if isinstance(error, stripe.RateLimitError):
        return True
    if isinstance(error, stripe.CardError | stripe.IdempotencyError):
        return False
    if isinstance(error, stripe.APIError):
        status = error.http_status or 0
        return status >= 500 or status == 409 or status == 0
    return False


# Each holder is a member of a sorted set scored by its expiry time on the
# Redis server's clock, so a slot taken by a worker that was killed mid-call
# frees itself when it expires, whatever the other traffic.
_ACQUIRE_SLOT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class SlotLimiter:
    """A limit on concurrent holders across processes, one Redis call per take.

    Dramatiq's ConcurrentRateLimiter keeps one counter with a key-wide TTL
    and updates it in a WATCH/MULTI/EXEC loop. Under load that loop retries
    several times per call. A slot leaked by a killed worker also stays in
    use for as long as traffic keeps the key alive.
    """

    def __init__(self, client: redis.Redis, key: str, *, limit: int, ttl_ms: int):
        self.client = client
        self.key = key
        self.limit = limit
        self.ttl_ms = ttl_ms
        self._acquire = client.register_script(_ACQUIRE_SLOT)

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Take a slot for the block if one is free; yields whether it was taken."""
        token = uuid.uuid4().hex
        taken = bool(
            self._acquire(keys=[self.key], args=[self.limit, self.ttl_ms, token])
        )
        try:
            yield taken
        finally:
            if taken:
                self.client.zrem(self.key, token)


@functools.cache
def _limiter() -> SlotLimiter:
    settings = get_settings()
    # A slot outlives the longest call it guards.
    slot_ttl_ms = int(
        (settings.stripe_connect_timeout_s + settings.stripe_read_timeout_s + 5) * 1000
    )
    return SlotLimiter(
        get_redis(),
        f"{settings.dramatiq_namespace}:stripe-calls",
        limit=settings.stripe_max_concurrency,
        ttl_ms=slot_ttl_ms,
    )


def _call_in_slot(call: Callable[[], T]) -> T:
    """Run ``call`` while holding one of the global Stripe slots.

    Waits up to ``STRIPE_SLOT_WAIT_S`` for a slot, polling with jitter, then
    raises Defer so the job runs again later without using up a retry.
    """
    settings = get_settings()
    deadline = time.monotonic() + settings.stripe_slot_wait_s
    while True:
        with _limiter().slot() as taken:
            if taken:
                return call()
        if time.monotonic() >= deadline:
            raise Defer(random.uniform(5, 15), "every Stripe call slot is taken")
        time.sleep(random.uniform(0.01, 0.1))


def call_stripe(call: Callable[[], T], *, description: str) -> T:
    """Run a Stripe call with backoff and full jitter on transient errors.

    The caller's call must carry its own idempotency key: it is sent again
    unchanged. Raises StripeUnavailable when the time budget
    (``CHARGE_TIME_BUDGET_S``) runs out, and the last Stripe error otherwise.
    """
    budget_s = get_settings().charge_time_budget_s

    def log_backoff(details: dict) -> None:
        error = details["exception"]
        logger.info(
            "transient Stripe error on %s, retry %d in %.2fs: %s",
            description,
            details["tries"],
            details["wait"],
            error,
        )

    @backoff.on_exception(
        backoff.expo,
        stripe.StripeError,
        giveup=lambda error: not is_transient(error),
        max_time=budget_s,
        jitter=backoff.full_jitter,
        factor=0.25,
        max_value=8,
        on_backoff=log_backoff,
        logger=None,
    )
    def attempt() -> T:
        return _call_in_slot(call)

    try:
        return attempt()
    except stripe.StripeError as error:
        if is_transient(error):
            raise StripeUnavailable(
                f"Stripe still failing after {budget_s:.0f}s budget on {description}: "
                f"{error}"
            ) from error
        raise
