"""Benchmark: CPU of the ledger's claim and finish, in four variants.

Every job a worker runs makes two ledger transactions: ``models.jobs.claim``
before the actor and ``models.jobs.finish`` after it. This benchmark runs both
on one thread, one job at a time, and reports per job the client's CPU time
(``time.thread_time``), PostgreSQL's CPU time (every ``postgres`` process,
the WAL writer included) and the wall time:

- ``models.jobs.claim`` and ``models.jobs.finish`` (SQL built once) in
  ORM sessions;
- the same SQL built with the ORM on every call, with
  ``synchronize_session=False``, as the ledger did before;
- ``models.jobs.claim`` and ``models.jobs.finish`` on a pooled psycopg
  connection in autocommit (``infra.db.driver_autocommit``), with durable
  commits;
- the same with the thread's own ledger cursor (``infra.db.ledger_cursor``),
  on a connection whose commits do not wait for the WAL flush, as the ledger
  middleware runs them.

Run from the repository root: ``python -m bench.ledger_statements [--jobs N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

import psycopg
from sqlalchemy import and_, case, func, or_, update
from sqlalchemy.orm import Session

from bench._common import (
    BenchError,
    CpuUsage,
    apply_environment,
    bench_environment,
    check_bench_urls,
    cleanup_on_exit,
    create_database,
    drop_database,
    exclusive_run,
    format_table,
    interrupt_on_signals,
    machine_description,
    require_servers,
)

LEASE_S = 90.0
ROUNDS = 2

# NOTE: the two *_without_sync functions rebuild, with the ORM, the SQL of
# models.jobs.CLAIM_SQL and models.jobs.FINISH_SQL for a successful run, so they must
# change when those statements do.


def claim_without_sync(session: Session, *, job_id: uuid.UUID) -> int:
    """Run claim's UPDATE with synchronize_session=False and return the attempt."""
    from models.jobs import PENDING_STATUSES, Job, JobStatus

    now = func.now()
    expired = and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, or_(Job.status.in_(PENDING_STATUSES), expired))
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            deaths=Job.deaths + case((expired, 1), else_=0),
            lease_expires_at=now + dt.timedelta(seconds=LEASE_S),
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .returning(Job.attempts, Job.deaths)
        .execution_options(synchronize_session=False)
    ).one()
    return row.attempts


def finish_without_sync(session: Session, *, job_id: uuid.UUID, attempt: int) -> None:
    """Run finish's UPDATE for a success with synchronize_session=False."""
    from models.jobs import Job, JobStatus

    session.execute(
        update(Job)
        .where(
            Job.id == job_id, Job.attempts == attempt, Job.status == JobStatus.RUNNING
        )
        .values(
            status=JobStatus.SUCCEEDED,
            lease_expires_at=None,
            updated_at=func.now(),
            last_error=None,
            finished_at=func.now(),
            result=None,
        )
        .execution_options(synchronize_session=False)
    )


def run_as_written(job_ids: list[uuid.UUID]) -> None:
    from infra.db import transaction
    from models.jobs import JobStatus, claim, finish

    for job_id in job_ids:
        with transaction() as session:
            outcome = claim(session, job_id=job_id, lease_s=LEASE_S)
        with transaction() as session:
            finish(
                session,
                job_id=job_id,
                attempt=outcome.attempt,
                status=JobStatus.SUCCEEDED,
            )


def run_without_sync(job_ids: list[uuid.UUID]) -> None:
    from infra.db import transaction

    for job_id in job_ids:
        with transaction() as session:
            attempt = claim_without_sync(session, job_id=job_id)
        with transaction() as session:
            finish_without_sync(session, job_id=job_id, attempt=attempt)


def run_prebuilt_sql(job_ids: list[uuid.UUID]) -> None:
    from infra.db import driver_autocommit

    run_on(driver_autocommit, job_ids)


def run_on_ledger_cursor(job_ids: list[uuid.UUID]) -> None:
    from infra.db import ledger_cursor

    run_on(ledger_cursor, job_ids)


def run_on(
    lend: Callable[[], AbstractContextManager[psycopg.Connection | psycopg.Cursor]],
    job_ids: list[uuid.UUID],
) -> None:
    from models.jobs import JobStatus, claim, finish

    for job_id in job_ids:
        with lend() as target:
            outcome = claim(target, job_id=job_id, lease_s=LEASE_S)
        with lend() as target:
            finish(
                target,
                job_id=job_id,
                attempt=outcome.attempt,
                status=JobStatus.SUCCEEDED,
            )


def create_jobs(count: int) -> list[uuid.UUID]:
    """Insert ``count`` enqueued jobs in one transaction and return their ids."""
    from infra.db import transaction
    from models.jobs import NewJob, insert_jobs

    run = uuid.uuid4().hex[:8]
    new_jobs = [
        NewJob(
            type="bench_noop",
            params={"run": run, "index": index},
            dedup_key=f"bench-ledger:{run}:{index}",
            queue="billing",
        )
        for index in range(count)
    ]
    with transaction() as session:
        return [job.id for job, _ in insert_jobs(session, new_jobs)]


def measure(
    run: Callable[[list[uuid.UUID]], None], count: int
) -> tuple[float, float, float]:
    """Return client CPU, PostgreSQL CPU and wall milliseconds per job of ``run``."""
    from infra.db import close_ledger_connection

    job_ids = create_jobs(count)
    servers = CpuUsage(worker_process_group=None)
    servers.start()
    cpu_started, wall_started = time.thread_time(), time.perf_counter()
    run(job_ids)
    cpu_ms = (time.thread_time() - cpu_started) * 1000 / count
    wall_ms = (time.perf_counter() - wall_started) * 1000 / count
    servers.stop()
    # Closed only after the reading, because the CPU of a server process that
    # has exited is not counted as PostgreSQL's.
    close_ledger_connection()
    postgres_ms = servers.by_group["postgres"] * 1000 / count
    return cpu_ms, postgres_ms, wall_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger_statements",
        description="Time the ledger's claim and finish statements on one thread.",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2000,
        help="jobs per variant and round (default 2000)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    sys.stdout.reconfigure(line_buffering=True)
    check_bench_urls()
    require_servers()
    interrupt_on_signals()
    apply_environment(bench_environment())
    print("\n".join(machine_description()))

    variants = [
        ("models.jobs statements, ORM sessions", run_as_written),
        ("ORM statements built per call, no session sync", run_without_sync),
        ("models.jobs statements, pooled driver connection", run_prebuilt_sql),
        ("models.jobs statements, ledger cursor", run_on_ledger_cursor),
    ]
    rows = []
    with exclusive_run(), cleanup_on_exit(drop_database):
        create_database()
        measure(run_as_written, min(args.jobs, 200))
        for round_number in range(1, ROUNDS + 1):
            for label, run in variants:
                cpu_ms, postgres_ms, wall_ms = measure(run, args.jobs)
                rows.append(
                    [
                        str(round_number),
                        label,
                        f"{cpu_ms:.2f}",
                        f"{postgres_ms:.2f}",
                        f"{wall_ms:.2f}",
                    ]
                )
    print()
    headers = [
        "round",
        "variant",
        "client CPU ms/job",
        "PostgreSQL CPU ms/job",
        "wall ms/job",
    ]
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; bench database dropped", file=sys.stderr)
        sys.exit(130)
