"""Benchmark: no-op jobs through vetqueue's ledger against bare Dramatiq.

Both cases use worker processes started with the Dramatiq CLI, with the same
process and thread counts, on the same Redis database and namespace:

- vetqueue: ``dramatiq bench._worker`` runs the ``bench_noop`` job type. Each
  job is enqueued with ``actors.ledger.enqueue`` (a ledger row committed, then
  a message) and runs the ledger middleware in the worker. A second
  variant enqueues with ``enqueue_many`` in batches.
- bare Dramatiq: ``dramatiq bench._bare_worker`` runs a plain ``@dramatiq.actor``
  no-op on a broker without the ledger middleware. Messages are sent with
  ``actor.send``.

Times run from the first enqueue, with the workers already running, so the
enqueue and the processing overlap. Both cases are timed to the same point:
the queue and its payload hash in Redis are empty, which happens only after
the last acknowledgement. vetqueue's middleware records a job's outcome before
the message is acknowledged. Once the clock has stopped, the benchmark checks
that every ledger row is ``succeeded``. Polling Redis costs both cases
the same. Counting succeeded rows instead would scan the whole jobs table
20 times a second, which took a few percent of the CPU under measurement.
Target: vetqueue's end-to-end throughput is at least half of bare Dramatiq's.

Run from the repository root:
``python -m bench.pipeline [--jobs N] [--processes P --threads T]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dramatiq
from sqlalchemy import func, select, text

from bench._common import (
    NAMESPACE,
    BenchError,
    CpuUsage,
    WorkerPool,
    apply_environment,
    bench_environment,
    bench_redis,
    check_bench_urls,
    cleanup_on_exit,
    create_database,
    drop_database,
    exclusive_run,
    flush_redis,
    format_table,
    interrupt_on_signals,
    load_average,
    machine_description,
    make_log_dir,
    require_servers,
    wait_for_count,
)
from bench._profiling import PROFILE_DIR_VARIABLE, print_profile

TARGET_RATIO = 0.5
WARM_UP_JOBS = 200
POLL_INTERVAL_S = 0.05


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One case: how long the enqueue took, and until the last job was done."""

    case: str
    jobs: int
    enqueue_s: float
    end_to_end_s: float | None
    cpu: str
    problem: str | None = None

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_s

    @property
    def throughput(self) -> float | None:
        return self.jobs / self.end_to_end_s if self.end_to_end_s else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description=(
            "Time no-op jobs through vetqueue's enqueue, ledger and workers "
            "against bare Dramatiq on the same Redis."
        ),
    )
    parser.add_argument(
        "--jobs", type=int, default=5000, help="jobs per case (default 5000)"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=8, help="threads per worker process (default 8)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="jobs per enqueue_many call in the batched case (default 500)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="seconds before a case is reported as unfinished (default 600)",
    )
    parser.add_argument(
        "--worker-log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="LOG_LEVEL of vetqueue's worker processes (default INFO)",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help=(
            "write per-thread CPU profiles of vetqueue's worker processes to this "
            "folder and print the top functions (profiling slows the workers down)"
        ),
    )
    args = parser.parse_args(argv)
    if min(args.jobs, args.processes, args.threads, args.batch_size) < 1:
        parser.error("--jobs, --processes, --threads and --batch-size must be >= 1")
    return args


def count_succeeded_jobs() -> int:
    from infra.db import transaction
    from models.jobs import Job, JobStatus

    with transaction() as session:
        return session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.status == JobStatus.SUCCEEDED)
        )


def truncate_jobs() -> None:
    from infra.db import transaction

    with transaction() as session:
        session.execute(text("TRUNCATE jobs"))


def enqueue_one_by_one(run: str, count: int) -> None:
    from actors.ledger import enqueue

    for index in range(count):
        enqueue("bench_noop", {"run": run, "index": index})


def enqueue_in_batches(run: str, count: int, batch_size: int) -> None:
    from actors.ledger import JobRequest, enqueue_many

    for first in range(0, count, batch_size):
        requests = [
            JobRequest(params={"run": run, "index": index})
            for index in range(first, min(first + batch_size, count))
        ]
        enqueue_many("bench_noop", requests)


def measure_ledger(
    case: str,
    send: Callable[[str, int], None],
    count: int,
    *,
    workers: WorkerPool,
    timeout_s: float,
) -> Measurement:
    """Enqueue ``count`` bench_noop jobs with ``send`` and wait until all are done."""
    from bench._noop_jobs import LEDGER_QUEUE

    truncate_jobs()
    run = uuid.uuid4().hex[:8]
    cpu = CpuUsage(worker_process_group=workers.process_group)
    cpu.start()
    started = time.perf_counter()
    send(run, count)
    enqueue_s = time.perf_counter() - started
    end_to_end_s = wait_for_count(
        lambda: count - messages_left(LEDGER_QUEUE),
        count,
        started=started,
        timeout_s=timeout_s,
        interval_s=POLL_INTERVAL_S,
        on_poll=workers.check_alive,
        progress_label=f"{case} acknowledged messages",
    )
    cpu.stop()
    problem = None
    if end_to_end_s is not None:
        succeeded = count_succeeded_jobs()
        if succeeded != count:
            problem = f"{case}: {succeeded} of {count} ledger rows succeeded"
    return Measurement(case, count, enqueue_s, end_to_end_s, cpu.summary(), problem)


def messages_left(queue: str) -> int:
    """Return a queue's ready messages plus fetched ones not yet acknowledged."""
    client = bench_redis()
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(f"{NAMESPACE}:{queue}")
        pipe.hlen(f"{NAMESPACE}:{queue}.msgs")
        ready, unacknowledged = pipe.execute()
    return max(ready, unacknowledged)


def measure_bare(
    actor: dramatiq.Actor, count: int, *, workers: WorkerPool, timeout_s: float
) -> Measurement:
    """Send ``count`` messages to the bare actor and wait until all are acknowledged."""
    from bench._noop_jobs import BARE_QUEUE

    run = uuid.uuid4().hex[:8]
    cpu = CpuUsage(worker_process_group=workers.process_group)
    cpu.start()
    started = time.perf_counter()
    for index in range(count):
        actor.send(run=run, index=index)
    enqueue_s = time.perf_counter() - started
    end_to_end_s = wait_for_count(
        lambda: count - messages_left(BARE_QUEUE),
        count,
        started=started,
        timeout_s=timeout_s,
        interval_s=POLL_INTERVAL_S,
        on_poll=workers.check_alive,
        progress_label="bare Dramatiq acknowledged messages",
    )
    cpu.stop()
    case = "bare Dramatiq, actor.send"
    return Measurement(case, count, enqueue_s, end_to_end_s, cpu.summary())


def run_vetqueue_cases(args: argparse.Namespace, log_dir: Path) -> list[Measurement]:
    environment = bench_environment(LOG_LEVEL=args.worker_log_level)
    worker_module = "bench._worker"
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        environment[PROFILE_DIR_VARIABLE] = str(args.profile_dir.resolve())
        worker_module = "bench._profiled_worker"
    workers = WorkerPool(
        worker_module,
        processes=args.processes,
        threads=args.threads,
        environment=environment,
        log_dir=log_dir,
        label=f"vetqueue-{args.processes}x{args.threads}",
    )
    measurements = []
    with workers:
        measure_ledger(
            "warm-up",
            lambda run, count: enqueue_in_batches(run, count, args.batch_size),
            WARM_UP_JOBS,
            workers=workers,
            timeout_s=args.timeout,
        )
        measurements.append(
            measure_ledger(
                "vetqueue, enqueue",
                enqueue_one_by_one,
                args.jobs,
                workers=workers,
                timeout_s=args.timeout,
            )
        )
        measurements.append(
            measure_ledger(
                f"vetqueue, enqueue_many by {args.batch_size}",
                lambda run, count: enqueue_in_batches(run, count, args.batch_size),
                args.jobs,
                workers=workers,
                timeout_s=args.timeout,
            )
        )
    return measurements


def run_bare_case(args: argparse.Namespace, log_dir: Path) -> Measurement:
    from bench._noop_jobs import bare_broker, declare_bare_noop
    from infra.settings import get_settings

    actor = declare_bare_noop(bare_broker(get_settings()))
    workers = WorkerPool(
        "bench._bare_worker",
        processes=args.processes,
        threads=args.threads,
        environment=bench_environment(),
        log_dir=log_dir,
        label=f"bare-{args.processes}x{args.threads}",
    )
    with workers:
        measure_bare(actor, WARM_UP_JOBS, workers=workers, timeout_s=args.timeout)
        return measure_bare(actor, args.jobs, workers=workers, timeout_s=args.timeout)


def check_dead_letters() -> list[str]:
    from bench._noop_jobs import BARE_QUEUE, LEDGER_QUEUE

    client = bench_redis()
    problems = []
    for queue in (LEDGER_QUEUE, BARE_QUEUE):
        dead = client.zcard(f"{NAMESPACE}:{queue}.XQ")
        if dead:
            problems.append(f"{dead} dead-lettered messages on queue {queue}")
    return problems


def report(measurements: list[Measurement], bare: Measurement) -> str:
    headers = [
        "case",
        "jobs",
        "enqueue s",
        "enqueued/s",
        "end-to-end s",
        "jobs/s",
        "vs bare",
        f">= {TARGET_RATIO}x bare",
    ]
    rows = []
    for measurement in [*measurements, bare]:
        throughput = measurement.throughput
        if throughput is None or bare.throughput is None:
            ratio_text, verdict = "-", "FAIL"
        else:
            ratio = throughput / bare.throughput
            ratio_text = f"{ratio:.2f}x"
            verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        if measurement is bare:
            verdict = "-"
        rows.append(
            [
                measurement.case,
                f"{measurement.jobs:,}",
                f"{measurement.enqueue_s:.2f}",
                f"{measurement.enqueue_rate:,.0f}",
                f"{measurement.end_to_end_s:.2f}"
                if measurement.end_to_end_s
                else "unfinished",
                f"{throughput:,.0f}" if throughput else "-",
                ratio_text,
                verdict,
            ]
        )
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    check_bench_urls()
    require_servers()
    interrupt_on_signals()
    apply_environment(bench_environment())

    from actors.broker import setup_broker
    from bench import _noop_jobs  # noqa: F401 - registers the bench_noop job type

    broker = setup_broker()
    if "bench_noop" not in broker.get_declared_actors():
        raise BenchError("setup_broker did not declare the bench_noop job type")
    log_dir = make_log_dir("pipeline")
    print("\n".join(machine_description()))
    print(f"worker logs: {log_dir}")
    print(f"workers: {args.processes} processes x {args.threads} threads")
    print(load_average())

    with exclusive_run(), cleanup_on_exit(drop_database, flush_redis):
        create_database()
        flush_redis()
        measurements = run_vetqueue_cases(args, log_dir)
        bare = run_bare_case(args, log_dir)
        problems = check_dead_letters()
    problems += [
        f"{measurement.case}: not every job finished (timed out or stalled)"
        for measurement in [*measurements, bare]
        if measurement.end_to_end_s is None
    ]
    problems += [m.problem for m in measurements if m.problem is not None]

    print()
    print(report(measurements, bare))
    for measurement in [*measurements, bare]:
        print(f"{measurement.case}: {measurement.cpu}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.profile_dir is not None:
        print_profile(args.profile_dir)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted; workers stopped and bench database dropped", file=sys.stderr
        )
        sys.exit(130)
