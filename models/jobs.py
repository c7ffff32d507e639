"""The job ledger: one row per job, the source of truth for its status.

Dramatiq delivers each message at least once, and the guarded updates here
turn that into one effective run. Only the worker that moves a row to
``running`` processes the message. The attempt number it takes then is a
fencing token, so a worker whose lease was taken over cannot record an outcome.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, Session, mapped_column

from infra.db import run_sql
from models.base import Base, created_at_column, enum_values

MAX_ERROR_CHARS = 4000


class JobStatus(enum.StrEnum):
    ENQUEUED = "enqueued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


PENDING_STATUSES = (JobStatus.ENQUEUED, JobStatus.RETRYING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index(
            "ix_jobs_due",
            "next_attempt_at",
            postgresql_where="status IN ('enqueued', 'retrying')",
        ),
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where="status = 'running'",
        ),
        Index("ix_jobs_finished_at", "finished_at"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    dedup_key: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    tenant_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tenants.id", ondelete="CASCADE")
    )
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", values_callable=enum_values),
        nullable=False,
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    deaths: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True)
    )
    next_attempt_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = created_at_column()
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    def to_dict(self) -> dict[str, Any]:
        return job_to_dict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    """A ledger row as plain values, outside any session.

    Enqueueing returns these rather than Job objects: building ORM objects
    for a page of 500 new jobs cost more CPU than inserting them.
    """

    id: uuid.UUID
    type: str
    params: dict[str, Any]
    dedup_key: str
    queue: str
    tenant_id: int | None
    status: JobStatus
    attempts: int
    deaths: int
    lease_expires_at: dt.datetime | None
    next_attempt_at: dt.datetime
    last_error: str | None
    result: dict[str, Any] | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return job_to_dict(self)


def job_to_dict(job: Job | JobRecord) -> dict[str, Any]:
    """Return a job as the API shows it."""

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(job.id),
        "type": job.type,
        "params": job.params,
        "dedup_key": job.dedup_key,
        "queue": job.queue,
        "tenant_id": job.tenant_id,
        "status": job.status.value,
        "attempts": job.attempts,
        "last_error": job.last_error,
        "result": job.result,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "next_attempt_at": iso(job.next_attempt_at)
        if job.status in PENDING_STATUSES
        else None,
    }


class DedupKeyConflict(Exception):
    """The dedup key belongs to a job of another type or with other params."""

    def __init__(self, existing: JobRecord) -> None:
        super().__init__(
            f"dedup key {existing.dedup_key!r} is already used by job {existing.id} "
            f"of type {existing.type!r} with different params; "
            "use a new key for a different job"
        )
        self.existing = existing


@dataclasses.dataclass(frozen=True)
class NewJob:
    """A job to insert: what the ledger needs before any message exists."""

    type: str
    params: dict[str, Any]
    dedup_key: str
    queue: str
    tenant_id: int | None = None


# One statement inserts any number of jobs: each column arrives as one array
# parameter, so the SQL is the same for every batch size and is built once.
# Building the insert with the ORM on every call cost more CPU than running
# it.
INSERT_JOBS = text(
    """
    INSERT INTO jobs
        (id, type, params, dedup_key, queue, tenant_id, status, attempts, deaths)
    SELECT id, type, CAST(params AS jsonb), dedup_key, queue, tenant_id,
           'enqueued', 0, 0
    FROM unnest(
        CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:params AS text[]),
        CAST(:dedup_keys AS text[]), CAST(:queues AS text[]),
        CAST(:tenant_ids AS bigint[])
    ) AS new (id, type, params, dedup_key, queue, tenant_id)
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING *
    """
).columns(*Job.__table__.c)


def insert_jobs(
    session: Session | Connection, new_jobs: Sequence[NewJob]
) -> list[tuple[JobRecord, bool]]:
    """Insert jobs whose dedup keys are new and return each job with a created flag.

    A key that exists returns the existing job, after a check that it has the
    same type and params. ``INSERT ... ON CONFLICT DO NOTHING`` makes concurrent
    inserts of one key wait for each other instead of failing, so no caller
    sees a unique violation. Raises DedupKeyConflict on a mismatch.
    """
    if not new_jobs:
        return []

    rows = session.execute(
        INSERT_JOBS,
        {
            "ids": [uuid.uuid4() for _ in new_jobs],
            "types": [new.type for new in new_jobs],
            "params": [json.dumps(new.params) for new in new_jobs],
            "dedup_keys": [new.dedup_key for new in new_jobs],
            "queues": [new.queue for new in new_jobs],
            "tenant_ids": [new.tenant_id for new in new_jobs],
        },
    )
    by_key = {row.dedup_key: JobRecord(**row._mapping) for row in rows}
    existing_keys = {new.dedup_key for new in new_jobs if new.dedup_key not in by_key}
    if existing_keys:
        existing = session.execute(
            select(*Job.__table__.c).where(Job.dedup_key.in_(existing_keys))
        )
        by_key.update({row.dedup_key: JobRecord(**row._mapping) for row in existing})

    results = []
    for new in new_jobs:
        job = by_key[new.dedup_key]
        created = new.dedup_key not in existing_keys
        if not created and (job.type != new.type or job.params != new.params):
            raise DedupKeyConflict(job)
        results.append((job, created))
    return results


@dataclasses.dataclass(frozen=True)
class Claim:
    """The outcome of trying to start a job for one delivered message."""

    started: bool
    attempt: int = 0
    deaths: int = 0
    reason: str = ""


# Every message runs these statements, so they are plain SQL in psycopg's
# parameter style, run with ``infra.db.run_sql`` on a driver connection:
# SQLAlchemy's statement and result processing cost more client CPU per
# message than the rest of a no-op job (bench/ledger_statements.py).
CLAIM_SQL = """
    UPDATE jobs SET
        status = 'running',
        attempts = attempts + 1,
        deaths = deaths + CASE WHEN status = 'running' THEN 1 ELSE 0 END,
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        started_at = coalesce(started_at, now()),
        updated_at = now()
    WHERE id = %(job_id)s
      AND (status IN ('enqueued', 'retrying')
           OR (status = 'running' AND lease_expires_at < now()))
    RETURNING attempts, deaths
"""

JOB_STATUS_SQL = "SELECT status FROM jobs WHERE id = %(job_id)s"

FINISH_SQL = """
    UPDATE jobs SET
        status = CAST(%(status)s AS job_status),
        lease_expires_at = NULL,
        updated_at = now(),
        last_error = %(error)s,
        finished_at = CASE WHEN %(finished)s THEN now() ELSE finished_at END,
        result = CASE WHEN %(finished)s THEN CAST(%(result)s AS jsonb)
                      ELSE result END,
        next_attempt_at = CASE WHEN %(finished)s THEN next_attempt_at
                               ELSE coalesce(%(next_attempt_at)s, now()) END
    WHERE id = %(job_id)s AND attempts = %(attempt)s AND status = 'running'
"""

SqlTarget = psycopg.Connection | psycopg.Cursor[Any] | Connection | Session


def succeed_cte(result_sql: str, *, condition_sql: str = "true") -> str:
    """Return a CTE named ``succeeded_job`` that marks the running job succeeded.

    A job whose work ends in one statement adds it to that statement, so that
    the work and its ledger record commit together (see
    ``actors.middleware.success_fence``). ``result_sql`` is the SQL expression
    of the job's result, as jsonb. The statement binds ``%(job_id)s`` and
    ``%(attempt)s``. The CTE returns the job id if it recorded the success.
    It returns no row if a newer attempt owns the job, the job id is NULL or
    ``condition_sql`` is false.
    """
    return f"""
    succeeded_job AS (
        UPDATE jobs SET
            status = 'succeeded',
            lease_expires_at = NULL,
            last_error = NULL,
            finished_at = now(),
            updated_at = now(),
            result = {result_sql}
        WHERE id = %(job_id)s AND attempts = %(attempt)s AND status = 'running'
          AND ({condition_sql})
        RETURNING id
    )"""


def claim(target: SqlTarget, *, job_id: uuid.UUID, lease_s: float) -> Claim:
    """Move a job to ``running`` if no other worker holds it, and take a lease.

    A ``running`` row whose lease expired belongs to a worker that died (or
    stalled past its time limit): taking it over counts a death.
    """
    rows, _ = run_sql(target, CLAIM_SQL, {"job_id": job_id, "lease_s": float(lease_s)})
    if rows:
        return Claim(started=True, attempt=rows[0].attempts, deaths=rows[0].deaths)

    rows, _ = run_sql(target, JOB_STATUS_SQL, {"job_id": job_id})
    if not rows:
        return Claim(started=False, reason="no ledger row")
    status = JobStatus(rows[0].status)
    if status == JobStatus.RUNNING:
        return Claim(started=False, reason="running under a live lease")
    return Claim(started=False, reason=f"already {status.value}")


def finish(
    target: SqlTarget,
    *,
    job_id: uuid.UUID,
    attempt: int,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    next_attempt_at: dt.datetime | None = None,
) -> bool:
    """Record the end of an attempt.

    ``next_attempt_at`` applies to pending statuses only and defaults to now.
    Returns False when a newer attempt took the job over and fenced this one out.
    """
    finished = status in FINISHED_STATUSES
    _, count = run_sql(
        target,
        FINISH_SQL,
        {
            "job_id": job_id,
            "attempt": attempt,
            "status": status.value,
            "error": error[:MAX_ERROR_CHARS] if error else None,
            "finished": finished,
            "result": json.dumps(result) if finished and result is not None else None,
            "next_attempt_at": None if finished else next_attempt_at,
        },
    )
    return count == 1


def mark_pending_failed(session: Session, *, job_id: uuid.UUID, error: str) -> bool:
    """Fail a job that never started; returns False unless it was pending."""
    updated = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(PENDING_STATUSES))
        .values(
            status=JobStatus.FAILED,
            last_error=error[:MAX_ERROR_CHARS],
            finished_at=func.now(),
            updated_at=func.now(),
        )
    )
    return updated.rowcount == 1


def jobs_to_resend(session: Session, *, stale_after_s: float, limit: int) -> list[Job]:
    """Return pending jobs past their due time, and running jobs with expired leases.

    Rows are locked with SKIP LOCKED so that two sweepers never pick the same job.
    """
    now = func.now()
    stale_before = now - dt.timedelta(seconds=stale_after_s)
    return list(
        session.scalars(
            select(Job)
            .where(
                or_(
                    and_(
                        Job.status.in_(PENDING_STATUSES),
                        Job.next_attempt_at < stale_before,
                    ),
                    and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
                )
            )
            .order_by(Job.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def touch_due_time(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Restart the stale clock of jobs whose message was just sent again."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status.in_(PENDING_STATUSES))
        .values(next_attempt_at=func.now(), updated_at=func.now())
    )


def reset_failed(session: Session, *, job_id: uuid.UUID) -> Job | None:
    """Put a failed job back to ``enqueued``. Returns None unless it was failed."""
    return session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.FAILED)
        .values(
            status=JobStatus.ENQUEUED,
            deaths=0,
            next_attempt_at=func.now(),
            finished_at=None,
            updated_at=func.now(),
        )
        .returning(Job)
    )


def prune_finished(session: Session, *, older_than_days: int, limit: int) -> int:
    """Delete up to ``limit`` finished jobs older than the retention period."""
    cutoff = func.now() - dt.timedelta(days=older_than_days)
    doomed = (
        select(Job.id)
        .where(Job.status.in_(FINISHED_STATUSES), Job.finished_at < cutoff)
        .limit(limit)
        .scalar_subquery()
    )
    return session.execute(delete(Job).where(Job.id.in_(doomed))).rowcount


def count_by_status(session: Session) -> dict[str, int]:
    counts = {status.value: 0 for status in JobStatus}
    for status, count in session.execute(
        select(Job.status, func.count()).group_by(Job.status)
    ):
        counts[status.value] = count
    return counts


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    type: str | None = None,
    tenant_id: int | None = None,
    dedup_key: str | None = None,
    limit: int = 50,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
) -> list[Job]:
    """Return up to ``limit`` jobs matching the filters, newest first.

    ``before`` is the (created_at, id) of the last job of the previous page.
    Comparing the row value ``(created_at, id)`` makes each page one range scan
    of the ``(created_at, id)`` index, however deep the listing goes, and the
    id breaks ties between jobs created in one transaction.
    """
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    if type is not None:
        query = query.where(Job.type == type)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if dedup_key is not None:
        query = query.where(Job.dedup_key == dedup_key)
    if before is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(*before))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(query))
