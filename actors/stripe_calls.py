"""Calls to Stripe: a global concurrency limit, timeouts and transient-error retries."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import backoff
import stripe
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

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
    authentication and idempotency mismatches are not.
    """
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    if isinstance(error, stripe.CardError | stripe.IdempotencyError):
        return False
    if isinstance(error, stripe.APIError):
        status = error.http_status or 0
        return status >= 500 or status == 409 or status == 0
    return False


@functools.cache
def _limiter() -> ConcurrentRateLimiter:
    settings = get_settings()
    # A slot outlives the longest call it guards, so a worker killed mid-call
    # frees its slot once the key's TTL passes with no other call taking one.
    # NOTE: under steady traffic the shared counter key never expires, so a
    # slot leaked by a killed worker stays taken until traffic pauses.
    slot_ttl_ms = int(
        (settings.stripe_connect_timeout_s + settings.stripe_read_timeout_s + 5) * 1000
    )
    return ConcurrentRateLimiter(
        RedisBackend(client=get_redis()),
        f"{settings.dramatiq_namespace}:stripe-calls",
        limit=settings.stripe_max_concurrency,
        ttl=slot_ttl_ms,
    )


def _call_in_slot(call: Callable[[], T]) -> T:
    """Run ``call`` while holding one of the global Stripe slots.

    Waits up to ``STRIPE_SLOT_WAIT_S`` for a slot, polling with jitter, then
    raises Defer so the job runs again later without using up a retry.
    """
    settings = get_settings()
    deadline = time.monotonic() + settings.stripe_slot_wait_s
    while True:
        with _limiter().acquire(raise_on_failure=False) as acquired:
            if acquired:
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
