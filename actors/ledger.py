"""Enqueueing through the job ledger.

A job is a ledger row first and a Dramatiq message second: the row is committed
with a unique dedup key, then the message is sent with the job id as its
message id. If the process dies between the two, the sweeper sends it later.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import dramatiq
import pydantic
from sqlalchemy import event
from sqlalchemy.orm import Session

from actors.errors import InvalidJobParams, UnknownJobType
from actors.redis_broker import BatchingRedisBroker
from actors.registry import JOB_TYPES, JobParams, JobType
from infra.db import transaction
from models.jobs import Job, JobRecord, NewJob, insert_jobs

logger = logging.getLogger(__name__)

# Messages per Redis round trip when several jobs are sent at once.
SEND_BATCH_SIZE = 500


@dataclasses.dataclass(frozen=True)
class Enqueued:
    """A job returned by enqueue, and whether this call created it."""

    job: JobRecord
    created: bool


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """One job to enqueue: params plus an optional dedup key and tenant."""

    params: dict[str, Any] | JobParams
    dedup_key: str | None = None
    tenant_id: int | None = None


def get_job_type(name: str) -> JobType:
    try:
        return JOB_TYPES[name]
    except KeyError:
        raise UnknownJobType(name, sorted(JOB_TYPES)) from None


def validate_params(job_type: JobType, params: Any) -> JobParams:
    """Return the params as the job type's model; raises InvalidJobParams."""
    if isinstance(params, job_type.params_model):
        return params
    try:
        return job_type.parse(params)
    except pydantic.ValidationError as exc:
        raise InvalidJobParams.from_validation_error(job_type.name, exc) from None


def enqueue(
    type_name: str,
    params: dict[str, Any] | JobParams,
    *,
    dedup_key: str | None = None,
    tenant_id: int | None = None,
    session: Session | None = None,
) -> Enqueued:
    """Create a job unless its dedup key exists, and send its message after commit.

    Without ``dedup_key`` the job type's natural key is used. With ``session``
    the ledger row joins that transaction and the message is sent only if it
    commits. Raises UnknownJobType, InvalidJobParams or DedupKeyConflict.
    """
    request = JobRequest(params=params, dedup_key=dedup_key, tenant_id=tenant_id)
    return enqueue_many(type_name, [request], session=session)[0]


def enqueue_many(
    type_name: str,
    requests: Sequence[JobRequest],
    *,
    session: Session | None = None,
) -> list[Enqueued]:
    """Enqueue several jobs of one type in one transaction (see ``enqueue``)."""
    job_type = get_job_type(type_name)
    new_jobs = [_new_job(job_type, request) for request in requests]

    if session is not None:
        results = [
            Enqueued(job, created) for job, created in insert_jobs(session, new_jobs)
        ]
        _send_after_commit(session, [r.job for r in results if r.created])
        return results

    with transaction() as own_session:
        results = [
            Enqueued(job, created)
            for job, created in insert_jobs(own_session, new_jobs)
        ]
    send_messages(r.job for r in results if r.created)
    return results


def _new_job(job_type: JobType, request: JobRequest) -> NewJob:
    params = validate_params(job_type, request.params)
    dedup_key = request.dedup_key
    if dedup_key is None:
        if job_type.natural_key is None:
            raise InvalidJobParams(
                job_type.name,
                [{"field": "dedup_key", "message": "required for this job type"}],
            )
        dedup_key = job_type.natural_key(params)
    tenant_id = request.tenant_id
    if tenant_id is None:
        tenant_id = job_type.tenant_id_of(params)
    return NewJob(
        type=job_type.name,
        params=params.model_dump(mode="json"),
        dedup_key=dedup_key,
        queue=job_type.queue,
        tenant_id=tenant_id,
    )


def _send_after_commit(session: Session, jobs: list[JobRecord]) -> None:
    if not jobs:
        return
    pending = session.info.setdefault("vetqueue_unsent_jobs", [])
    if not pending:
        event.listen(session, "after_commit", _send_pending, once=True)
        event.listen(session, "after_rollback", _drop_pending, once=True)
    pending.extend(jobs)


def _send_pending(session: Session) -> None:
    jobs = session.info.pop("vetqueue_unsent_jobs", [])
    if event.contains(session, "after_rollback", _drop_pending):
        event.remove(session, "after_rollback", _drop_pending)
    send_messages(jobs)


def _drop_pending(session: Session) -> None:
    session.info.pop("vetqueue_unsent_jobs", None)
    if event.contains(session, "after_commit", _send_pending):
        event.remove(session, "after_commit", _send_pending)


def build_message(job: Job | JobRecord) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name=job.queue,
        actor_name=job.type,
        args=(),
        kwargs=job.params,
        options={},
        message_id=str(job.id),
        message_timestamp=int(time.time() * 1000),
    )


def send_messages(jobs: Iterable[Job | JobRecord]) -> int:
    """Send one message per job and return how many were sent.

    A send that fails is logged, not raised: the job is safe in the ledger and
    the sweeper sends it once it is overdue. Several messages go to Redis in
    batches of ``SEND_BATCH_SIZE``, one round trip each.
    """
    broker = dramatiq.get_broker()
    jobs = list(jobs)
    if len(jobs) > 1 and isinstance(broker, BatchingRedisBroker):
        return sum(
            _send_batch(broker, jobs[start : start + SEND_BATCH_SIZE])
            for start in range(0, len(jobs), SEND_BATCH_SIZE)
        )
    sent = 0
    for job in jobs:
        try:
            broker.enqueue(build_message(job))
        except Exception:
            logger.warning(
                "sending message failed; the sweeper will resend it",
                extra={"job_id": str(job.id), "dedup_key": job.dedup_key},
                exc_info=True,
            )
            continue
        sent += 1
    return sent


def _send_batch(broker: BatchingRedisBroker, jobs: list[Job | JobRecord]) -> int:
    try:
        broker.enqueue_batch([build_message(job) for job in jobs])
    except Exception:
        # Part of the batch may have arrived. The sweeper resends only the
        # jobs whose message is missing, and a duplicate delivery cannot claim
        # a job twice.
        logger.warning(
            "sending %d messages (jobs %s to %s) failed; the sweeper will resend"
            " those still waiting",
            len(jobs),
            jobs[0].id,
            jobs[-1].id,
            exc_info=True,
        )
        return 0
    return len(jobs)


def scoped_dedup_key(*, tenant_id: int | None, key: str) -> str:
    """Scope a caller-given key to its tenant (or the operator scope)."""
    scope = f"tenant:{tenant_id}" if tenant_id is not None else "operator"
    return f"{scope}:{key}"
