"""Benchmark: a monthly billing run against a sequential loop doing the same work.

For each size, every tenant is billed and charged through the Stripe test
server with 50 ms of latency per PaymentIntent request:

- vetqueue: Dramatiq worker processes started with the Dramatiq CLI
  (``dramatiq actors.worker``) run ``billing_run``, then ``bill_tenant`` and
  ``charge_invoice`` per tenant. The wall time runs from the enqueue of the
  ``billing_run`` job until every invoice is ``paid``, polled every 0.2 s.
  It is measured once per STRIPE_MAX_CONCURRENCY value.
- sequential: one thread creates the invoice, opens the charge attempt, confirms
  the PaymentIntent and records the outcome, one tenant at a time, with the
  charging module's own functions and no queue. By default it runs on the
  first 1,000 tenants and larger sizes are extrapolated from its per-tenant
  rate; ``--full-baseline`` runs it on every tenant.

Targets: 10,000 tenants in at most 60 s, and at least 15 times the sequential
loop's tenants per second.

Run from the repository root: ``python -m bench.billing [--sizes 1000,10000]
[--processes P --threads T] [--stripe-concurrency 8,32] [--full-baseline]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bench._common import (
    STRIPE_API_KEY,
    BenchError,
    CpuUsage,
    WorkerPool,
    apply_environment,
    bench_environment,
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

if TYPE_CHECKING:
    from devservers.stripe_server import StripeTestServer

STRIPE_LATENCY_MS = 50
BASELINE_TENANTS = 1000
TARGET_SIZE = 10_000
TARGET_WALL_S = 60.0
TARGET_SPEEDUP = 15.0
POLL_INTERVAL_S = 0.2
PLAN_PRICE_CENTS = 4900


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The sequential loop's measurement on the first ``tenants`` tenants."""

    tenants: int
    seconds: float
    cpu: str

    @property
    def tenants_per_s(self) -> float:
        return self.tenants / self.seconds


@dataclasses.dataclass(frozen=True)
class QueueRun:
    """One vetqueue measurement and what the checks after it found."""

    size: int
    processes: int
    threads: int
    stripe_concurrency: int
    seconds: float | None
    jobs: int
    jobs_run_again: int
    stripe_requests: int
    problems: list[str]
    cpu: str

    @property
    def tenants_per_s(self) -> float | None:
        return self.size / self.seconds if self.seconds else None

    @property
    def jobs_per_s(self) -> float | None:
        return self.jobs / self.seconds if self.seconds else None


def parse_sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid sizes {value!r}: expected whole numbers such as 1000,10000"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"invalid sizes {value!r}: each must be >= 1")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.billing",
        description=(
            "Time a billing run of N tenants through vetqueue's workers against "
            f"a sequential loop, with {STRIPE_LATENCY_MS} ms of Stripe latency."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[1000, 10_000],
        help="comma-separated tenant counts (default 1000,10000)",
    )
    parser.add_argument(
        "--processes", type=int, default=4, help="worker processes (default 4)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=8,
        help="threads per worker process (default 8)",
    )
    parser.add_argument(
        "--stripe-concurrency",
        type=parse_sizes,
        default=[8, 32],
        help=(
            "comma-separated STRIPE_MAX_CONCURRENCY values, one vetqueue run each "
            "(default 8,32; 8 is the setting's default)"
        ),
    )

    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument(
        "--full-baseline",
        action="store_true",
        help=(
            "run the sequential loop on every tenant instead of the first "
            f"{BASELINE_TENANTS:,} (10,000 tenants take over 8 minutes)"
        ),
    )
    baseline.add_argument(
        "--baseline-tenants",
        type=int,
        default=BASELINE_TENANTS,
        help=(
            "tenants the sequential loop runs on, per size; larger sizes are "
            f"extrapolated from its rate (default {BASELINE_TENANTS:,})"
        ),
    )

    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds before a vetqueue run is reported as unfinished (default 900)",
    )
    parser.add_argument(
        "--worker-log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="LOG_LEVEL of the worker processes (default INFO, the product default)",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help=(
            "write per-thread CPU profiles of the worker processes to this folder "
            "and print the top functions (profiling slows the workers down)"
        ),
    )

    args = parser.parse_args(argv)
    if min(args.processes, args.threads, args.baseline_tenants) < 1:
        parser.error("--processes, --threads and --baseline-tenants must be >= 1")
    return args


def insert_tenants(count: int) -> None:
    """Insert ``count`` paying tenants whose card (``pm_card_visa``) succeeds."""
    from infra.db import transaction
    from models.tenants import Tenant, TenantStatus

    rows = [
        {
            "name": f"Bench clinic {index}",
            "time_zone": "UTC",
            "plan_price_cents": PLAN_PRICE_CENTS,
            "currency": "eur",
            "status": TenantStatus.ACTIVE,
            # Before any month the benchmark bills: a tenant is billed only
            # for months that ended after it was created.
            "created_at": dt.datetime(2023, 1, 1, tzinfo=dt.UTC),
            "stripe_customer_id": f"cus_bench{index}",
            "stripe_payment_method_id": "pm_card_visa",
        }
        for index in range(count)
    ]
    with transaction() as session:
        session.execute(insert(Tenant), rows)


def count_paid_invoices() -> int:
    from infra.db import transaction
    from models.billing import InvoiceStatus, PlatformInvoice

    with transaction() as session:
        return session.scalar(
            select(func.count())
            .select_from(PlatformInvoice)
            .where(PlatformInvoice.status == InvoiceStatus.PAID)
        )


def prepare(size: int) -> None:
    """Create a fresh database with ``size`` tenants and an empty Redis database."""
    create_database()
    insert_tenants(size)
    flush_redis()


def bill_and_charge(tenant_id: int, period: str) -> None:
    """Bill and charge one tenant in this thread, as bill_tenant and charge_invoice do.

    Calls the charging module's own (private) steps, so that only the queue,
    the ledger and the Stripe call limiter are left out.
    """
    from actors.billing import period_start
    from actors.charging import (
        ChargeInvoiceParams,
        PendingCharge,
        _confirm_payment_intent,
        _open_attempt,
        _record_success,
    )
    from infra.db import transaction
    from models.billing import PlatformInvoice
    from models.tenants import Tenant

    with transaction() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        invoice_id = session.scalar(
            pg_insert(PlatformInvoice)
            .values(
                tenant_id=tenant.id,
                period_start=period_start(period),
                amount_cents=tenant.plan_price_cents,
                amount_due_cents=tenant.plan_price_cents,
                currency=tenant.currency,
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "period_start"])
            .returning(PlatformInvoice.id)
        )
    with transaction() as session:
        pending = _open_attempt(
            session, ChargeInvoiceParams(invoice_id=invoice_id, attempt_number=1)
        )
    if not isinstance(pending, PendingCharge):
        raise BenchError(f"tenant {tenant_id} was not charged: {pending}")
    intent = _confirm_payment_intent(pending)
    _record_success(pending, intent)


def run_sequential(tenant_count: int, period: str) -> Baseline:
    """Time the sequential loop on the first ``tenant_count`` tenants."""
    from infra.db import transaction
    from models.tenants import Tenant

    with transaction() as session:
        tenant_ids = list(
            session.scalars(select(Tenant.id).order_by(Tenant.id).limit(tenant_count))
        )
    cpu = CpuUsage(worker_process_group=None)
    cpu.start()
    started = time.perf_counter()
    for tenant_id in tenant_ids:
        bill_and_charge(tenant_id, period)
    seconds = time.perf_counter() - started
    cpu.stop()
    paid = count_paid_invoices()
    if paid != len(tenant_ids):
        raise BenchError(f"sequential loop paid {paid} of {len(tenant_ids)} invoices")
    return Baseline(tenants=len(tenant_ids), seconds=seconds, cpu=cpu.summary())


def check_run(
    size: int, stripe_server: StripeTestServer
) -> tuple[int, int, int, list[str]]:
    """Check a finished run: one paid invoice and one PaymentIntent per tenant.

    Returns the ledger's job count, the jobs started more than once, the
    PaymentIntent requests Stripe received, and a list of problems found.
    """
    from actors.queues import queue_stats
    from infra.db import transaction
    from models.billing import ChargeAttempt, ChargeOutcome
    from models.jobs import Job, count_by_status

    problems = []
    with transaction() as session:
        jobs_by_status = count_by_status(session)
        jobs = sum(jobs_by_status.values())
        jobs_run_again = session.scalar(
            select(func.count()).select_from(Job).where(Job.attempts > 1)
        )
        succeeded_attempts = session.scalar(
            select(func.count())
            .select_from(ChargeAttempt)
            .where(ChargeAttempt.outcome == ChargeOutcome.SUCCEEDED)
        )
    unfinished = {
        status: count
        for status, count in jobs_by_status.items()
        if status != "succeeded" and count
    }
    if unfinished:
        problems.append(f"jobs not succeeded: {unfinished}")
    if succeeded_attempts != size:
        problems.append(f"{succeeded_attempts} succeeded charge attempts, not {size}")
    intents = len(stripe_server.payment_intents())
    if intents != size:
        problems.append(f"Stripe holds {intents} PaymentIntents for {size} tenants")
    dead = sum(queue["dead_letters"] for queue in queue_stats())
    if dead:
        problems.append(f"{dead} dead-lettered messages")
    return jobs, jobs_run_again, stripe_server.request_count, problems


def all_jobs_finished() -> bool:
    from infra.db import transaction
    from models.jobs import count_by_status

    with transaction() as session:
        counts = count_by_status(session)
    return counts["succeeded"] + counts["failed"] == sum(counts.values())


def run_label(size: int, args: argparse.Namespace, stripe_concurrency: int) -> str:
    return f"billing-{size}-{args.processes}x{args.threads}-c{stripe_concurrency}"


def run_vetqueue(
    size: int,
    *,
    args: argparse.Namespace,
    stripe_concurrency: int,
    stripe_server: StripeTestServer,
    log_dir: Path,
    period: str,
) -> QueueRun:
    """Bill ``size`` tenants through worker processes and time it."""
    from actors.ledger import enqueue

    prepare(size)
    stripe_server.reset()
    stripe_server.set_latency(latency_ms=STRIPE_LATENCY_MS)
    # The engine's pool keeps DB_POOL_SIZE connections and opens as many more on
    # demand, so this gives every worker thread a connection without waiting.
    pool_size = max(10, args.threads)
    environment = bench_environment(
        stripe_api_base=stripe_server.url,
        STRIPE_MAX_CONCURRENCY=str(stripe_concurrency),
        DB_POOL_SIZE=str(pool_size),
        LOG_LEVEL=args.worker_log_level,
    )
    label = run_label(size, args, stripe_concurrency)
    worker_module = "actors.worker"
    if args.profile_dir is not None:
        profile_dir = args.profile_dir / label
        profile_dir.mkdir(parents=True, exist_ok=True)
        environment[PROFILE_DIR_VARIABLE] = str(profile_dir.resolve())
        worker_module = "bench._profiled_worker"
    workers = WorkerPool(
        worker_module,
        processes=args.processes,
        threads=args.threads,
        environment=environment,
        log_dir=log_dir,
        label=label,
    )
    cpu = CpuUsage(worker_process_group=None)
    with workers:
        cpu.worker_process_group = workers.process_group
        cpu.start()
        started = time.perf_counter()
        enqueue("billing_run", {"period": period})
        seconds = wait_for_count(
            count_paid_invoices,
            size,
            started=started,
            timeout_s=args.timeout,
            interval_s=POLL_INTERVAL_S,
            on_poll=workers.check_alive,
            progress_label=f"{label} paid invoices",
        )
        cpu.stop()
        # The ledger records a job's success after its invoice is paid, so the
        # checks wait for the last jobs to finish, outside the timed part.
        deadline = time.monotonic() + 30
        while seconds and not all_jobs_finished() and time.monotonic() < deadline:
            time.sleep(0.2)
    jobs, jobs_run_again, requests, problems = check_run(size, stripe_server)
    if seconds is None:
        problems.insert(0, "not every invoice was paid (timed out or stalled)")
    return QueueRun(
        size=size,
        processes=args.processes,
        threads=args.threads,
        stripe_concurrency=stripe_concurrency,
        seconds=seconds,
        jobs=jobs,
        jobs_run_again=jobs_run_again,
        stripe_requests=requests,
        problems=problems,
        cpu=cpu.summary(),
    )


def verdict(passed: bool | None) -> str:
    if passed is None:
        return "n/a"
    return "PASS" if passed else "FAIL"


def report(
    sizes: list[int], baselines: dict[int, Baseline], runs: list[QueueRun]
) -> str:
    headers = [
        "tenants",
        "configuration",
        "wall s",
        "tenants/s",
        "jobs/s",
        "speed-up",
        f"<= {TARGET_WALL_S:.0f} s",
        f">= {TARGET_SPEEDUP:.0f}x",
    ]
    rows = []
    for size in sizes:
        baseline = baselines[size]
        sequential_s = size / baseline.tenants_per_s
        measured = "measured" if baseline.tenants == size else "extrapolated"
        rows.append(
            [
                f"{size:,}",
                f"sequential loop ({baseline.tenants:,} tenants measured)",
                f"{sequential_s:.1f} ({measured})",
                f"{baseline.tenants_per_s:.1f}",
                "-",
                "1.0x",
                "-",
                "-",
            ]
        )
        for run in runs:
            if run.size != size:
                continue
            configuration = (
                f"vetqueue {run.processes}x{run.threads} threads, "
                f"STRIPE_MAX_CONCURRENCY={run.stripe_concurrency}"
            )
            if run.seconds is None:
                rows.append(
                    [f"{size:,}", configuration, "unfinished", "-", "-", "-"]
                    + ["FAIL", "FAIL"]
                )
                continue
            speedup = run.tenants_per_s / baseline.tenants_per_s
            wall_ok = run.seconds <= TARGET_WALL_S if size == TARGET_SIZE else None
            rows.append(
                [
                    f"{size:,}",
                    configuration,
                    f"{run.seconds:.1f}",
                    f"{run.tenants_per_s:.1f}",
                    f"{run.jobs_per_s:.1f}",
                    f"{speedup:.1f}x",
                    verdict(wall_ok),
                    verdict(speedup >= TARGET_SPEEDUP and not run.problems),
                ]
            )
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    check_bench_urls()
    require_servers()
    interrupt_on_signals()

    from devservers.stripe_server import StripeTestServer

    # Kept-alive connections, as with Stripe's API, so that neither side pays
    # for a new connection per request.
    stripe_server = StripeTestServer(keep_alive=True).start()
    apply_environment(bench_environment(stripe_api_base=stripe_server.url))

    from actors.billing import previous_month
    from actors.broker import setup_broker

    setup_broker()
    period = previous_month()
    log_dir = make_log_dir("billing")
    print("\n".join(machine_description()))
    print(f"worker logs: {log_dir}")

    baselines: dict[int, Baseline] = {}
    runs: list[QueueRun] = []
    cleanups = (stripe_server.stop, drop_database, flush_redis)
    with exclusive_run(), cleanup_on_exit(*cleanups):
        for size in args.sizes:
            tenant_count = (
                size if args.full_baseline else min(size, args.baseline_tenants)
            )
            print(
                f"{size:,} tenants: sequential loop on {tenant_count:,} tenants "
                f"({load_average()})"
            )
            prepare(size)
            stripe_server.reset()
            stripe_server.set_latency(latency_ms=STRIPE_LATENCY_MS)
            baselines[size] = run_sequential(tenant_count, period)
            print(f"  {baselines[size].tenants_per_s:.1f} tenants/s")
            print(f"  {baselines[size].cpu}")

            for concurrency in args.stripe_concurrency:
                print(
                    f"{size:,} tenants: vetqueue {args.processes}x{args.threads}, "
                    f"STRIPE_MAX_CONCURRENCY={concurrency} ({load_average()})"
                )
                run = run_vetqueue(
                    size,
                    args=args,
                    stripe_concurrency=concurrency,
                    stripe_server=stripe_server,
                    log_dir=log_dir,
                    period=period,
                )
                runs.append(run)
                wall = f"{run.seconds:.1f}s" if run.seconds else "unfinished"
                print(
                    f"  {wall}, {run.jobs} jobs, {run.jobs_run_again} started more "
                    f"than once, {run.stripe_requests} Stripe requests"
                )
                print(f"  {run.cpu}")
                for problem in run.problems:
                    print(f"  PROBLEM: {problem}")
                if args.profile_dir is not None:
                    print_profile(args.profile_dir / run_label(size, args, concurrency))

    print()
    print(
        f"Stripe test server latency {STRIPE_LATENCY_MS} ms per request; "
        f"API key {STRIPE_API_KEY}; billing period {period}."
    )
    print(report(args.sizes, baselines, runs))
    extrapolated = [s for s in args.sizes if baselines[s].tenants != s]
    if extrapolated:
        sizes_text = ", ".join(f"{s:,}" for s in extrapolated)
        print(
            f"The sequential times for {sizes_text} tenants are extrapolated from "
            "the per-tenant rate of the measured tenants; --full-baseline "
            "measures them."
        )
    return 1 if any(run.problems for run in runs) else 0


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
