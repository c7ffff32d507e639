"""Broker set-up: the Redis broker, its middleware, and every job type's actor."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from typing import Any

import dramatiq
import pydantic
from dramatiq.middleware import Retries

from actors.errors import Defer, LedgerUnavailable, MalformedMessage, PermanentJobError
from actors.middleware import LedgerMiddleware, current_run
from actors.redis_broker import BatchingRedisBroker
from actors.registry import JOB_TYPES, JobType, load_job_modules
from infra.db import ledger_cursor, retry_once_if_disconnected
from infra.redis import connect
from infra.settings import Settings, get_settings
from models.jobs import JobStatus, finish

logger = logging.getLogger(__name__)


def setup_broker(settings: Settings | None = None) -> BatchingRedisBroker:
    """Create the broker, make it Dramatiq's global broker, and declare all actors.

    Every process calls this once at start-up, before it enqueues or consumes.
    """
    settings = settings or get_settings()
    broker = BatchingRedisBroker(
        client=connect(settings.redis_url), namespace=settings.dramatiq_namespace
    )
    broker.add_middleware(
        LedgerMiddleware(
            lease_grace_s=settings.lease_grace_s,
            max_deaths=settings.max_worker_deaths,
        ),
        before=Retries,
    )
    dramatiq.set_broker(broker)

    load_job_modules()
    for job_type in JOB_TYPES.values():
        _declare_actor(broker, job_type, settings)
    return broker


def _declare_actor(
    broker: BatchingRedisBroker, job_type: JobType, settings: Settings
) -> dramatiq.Actor:
    return dramatiq.actor(
        functools.partial(run_job, job_type),
        actor_name=job_type.name,
        queue_name=job_type.queue,
        broker=broker,
        time_limit=job_type.time_limit(settings),
        max_retries=job_type.max_retries,
        min_backoff=job_type.min_backoff_ms or int(settings.retry_min_backoff_s * 1000),
        max_backoff=job_type.max_backoff_ms,
        throws=(PermanentJobError,),
    )


def run_job(job_type: JobType, **kwargs: Any) -> None:
    """Validate a message's params and run the job type's function.

    The function's result goes to the ledger middleware through the run
    context rather than as the actor's return value, which Dramatiq would
    discard with a warning unless a results backend is configured. Nothing
    runs when the middleware decided to skip the message (a duplicate
    delivery, or a job that already finished).
    """
    run = current_run()
    if run is None:
        # The ledger middleware failed before it could claim the message (its
        # error is logged just before). Raising lets Retries deliver it again
        # instead of acknowledging a message that never ran.
        raise LedgerUnavailable(
            f"job {job_type.name} was not claimed in the ledger; will retry"
        )
    if run.skip:
        return

    try:
        params = job_type.parse(kwargs)
    except pydantic.ValidationError as exc:
        raise MalformedMessage(f"invalid params for {job_type.name}: {exc}") from None

    try:
        run.result = job_type.fn(params)
    except Defer as deferral:
        _defer(job_type, kwargs, deferral)
        run.skip = True


def _defer(job_type: JobType, kwargs: dict[str, Any], deferral: Defer) -> None:
    """Put the job back to ``enqueued`` and send it again after the delay."""
    run = current_run()
    assert run is not None
    delay_ms = max(1, int(deferral.delay_s * 1000))
    recorded = retry_once_if_disconnected(
        ledger_cursor,
        lambda cursor: finish(
            cursor,
            job_id=run.job_id,
            attempt=run.attempt,
            status=JobStatus.ENQUEUED,
            error=f"deferred: {deferral.reason}",
            next_attempt_at=dt.datetime.now(dt.UTC)
            + dt.timedelta(milliseconds=delay_ms),
        ),
    )
    if not recorded:
        return
    message = dramatiq.Message(
        queue_name=job_type.queue,
        actor_name=job_type.name,
        args=(),
        kwargs=kwargs,
        options={},
        message_id=run.message_id,
        message_timestamp=int(time.time() * 1000),
    )
    dramatiq.get_broker().enqueue(message, delay=delay_ms)
    logger.info("job deferred for %d ms: %s", delay_ms, deferral.reason)
