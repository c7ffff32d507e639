"""Set-up shared by the benchmarks: the bench database, Redis, workers and reports.

The benchmarks use their own PostgreSQL database (``vetqueue_bench``, dropped
and created again for each measurement), their own Redis database number (13)
and their own Dramatiq namespace (``vetqueue-bench``). Override the servers
with VETQUEUE_BENCH_POSTGRES (a server URL without a database name) and
VETQUEUE_BENCH_REDIS (a URL that names a Redis database other than 0).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import redis
import sqlalchemy as sa
from alembic.config import Config

from alembic import command

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "vetqueue_bench"
PROTECTED_DATABASES = ("vetqueue", "vetqueue_demo", "vetqueue_test", "postgres")
SERVER_URL = os.environ.get(
    "VETQUEUE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432"
).rstrip("/")
REDIS_URL = os.environ.get("VETQUEUE_BENCH_REDIS", "redis://127.0.0.1:6379/13")
NAMESPACE = "vetqueue-bench"
DATABASE_URL = f"{SERVER_URL}/{BENCH_DATABASE}"
STRIPE_API_KEY = "sk_test_vetqueue_bench"


class BenchError(RuntimeError):
    """The benchmark cannot run or cannot finish a measurement."""


def check_bench_urls() -> None:
    """Raise BenchError unless the database and Redis URLs are the bench's own."""
    if BENCH_DATABASE in PROTECTED_DATABASES:
        raise BenchError(
            f"invalid bench database {BENCH_DATABASE!r}: it is one of the "
            f"databases the benchmarks must not drop, {PROTECTED_DATABASES}"
        )
    redis_db = urlsplit(REDIS_URL).path.lstrip("/")
    if not redis_db.isdigit() or int(redis_db) == 0:
        raise BenchError(
            f"invalid VETQUEUE_BENCH_REDIS={REDIS_URL!r}: name a Redis database "
            "other than 0, e.g. redis://127.0.0.1:6379/13, because the benchmarks "
            "empty it"
        )


def bench_environment(
    *, stripe_api_base: str | None = None, **overrides: str
) -> dict[str, str]:
    """Return the settings variables of every bench process, with overrides."""
    environment = {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "DRAMATIQ_NAMESPACE": NAMESPACE,
        "STRIPE_API_KEY": STRIPE_API_KEY,
        "LOG_LEVEL": "INFO",
    }
    if stripe_api_base is not None:
        environment["STRIPE_API_BASE"] = stripe_api_base
    environment.update(overrides)
    return environment


def apply_environment(environment: dict[str, str]) -> None:
    """Set the variables in this process and rebuild every cached client from them."""
    from actors import stripe_calls
    from infra.db import reset_engine
    from infra.redis import get_redis
    from infra.settings import get_settings
    from infra.stripe_client import get_stripe

    os.environ.update(environment)
    get_settings.cache_clear()
    get_stripe.cache_clear()
    get_redis.cache_clear()
    stripe_calls._limiter.cache_clear()
    reset_engine()


# Key of the PostgreSQL advisory lock that one benchmark run holds at a time.
RUN_LOCK_KEY = 0x76657462656E6368


@contextmanager
def exclusive_run() -> Iterator[None]:
    """Take the bench lock for the block, so that two runs never share the database.

    The lock is a session-level advisory lock taken on a connection to the
    ``postgres`` database. It is released when the block ends or the process
    dies. Raises BenchError when another run has taken it.
    """
    admin = _admin_engine()
    with admin.connect() as connection:
        locked = connection.execute(
            sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": RUN_LOCK_KEY}
        ).scalar()
        if not locked:
            raise BenchError(
                "another benchmark run is using the bench database; "
                "retry after it has finished"
            )
        try:
            yield
        finally:
            connection.execute(
                sa.text("SELECT pg_advisory_unlock(:key)"), {"key": RUN_LOCK_KEY}
            )
    admin.dispose()


def _admin_engine() -> sa.Engine:
    return sa.create_engine(f"{SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")


def create_database() -> None:
    """Drop the bench database if it exists, create it and migrate it to head."""
    from infra.db import reset_engine

    reset_engine()
    drop_database()
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
    admin.dispose()

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = DATABASE_URL
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def drop_database() -> None:
    """Drop the bench database, closing its connections first."""
    from infra.db import reset_engine

    reset_engine()
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(
            sa.text(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        )
    admin.dispose()


def bench_redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)


def flush_redis() -> None:
    """Empty the bench's own Redis database (FLUSHDB on that number only)."""
    bench_redis().flushdb()


def require_servers() -> None:
    """Raise BenchError naming the server that cannot be reached."""
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise BenchError(
            f"connecting to PostgreSQL at {SERVER_URL} failed: {exc}. "
            "Start it with ./scripts/services.sh or set VETQUEUE_BENCH_POSTGRES."
        ) from None
    finally:
        admin.dispose()
    try:
        bench_redis().ping()
    except redis.RedisError as exc:
        raise BenchError(
            f"connecting to Redis at {REDIS_URL} failed: {exc}. "
            "Start it with ./scripts/services.sh or set VETQUEUE_BENCH_REDIS."
        ) from None


def check_connection_budget(connections: int) -> None:
    """Raise BenchError unless PostgreSQL can open ``connections`` more connections.

    A worker thread that cannot connect leaves its job ``running`` until the
    sweeper re-sends it, which no benchmark runs, so the run would hang.
    """
    admin = _admin_engine()
    with admin.connect() as connection:
        maximum = int(connection.execute(sa.text("SHOW max_connections")).scalar())
        reserved = int(
            connection.execute(sa.text("SHOW superuser_reserved_connections")).scalar()
        )
        in_use = connection.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = :t"),
            {"t": "client backend"},
        ).scalar()
    admin.dispose()
    free = maximum - reserved - in_use
    if connections > free:
        raise BenchError(
            f"the workers may open {connections} PostgreSQL connections but only "
            f"{free} of max_connections={maximum} are free ({in_use} in use); "
            "use fewer --processes or --threads"
        )


def machine_description() -> list[str]:
    """Return lines naming the CPU, memory and server versions of this run."""
    cpu_model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().split()
        memory_gib = int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2
    except (OSError, ValueError, IndexError):
        memory_gib = float("nan")

    admin = _admin_engine()
    with admin.connect() as connection:
        postgres_version = connection.execute(sa.text("SHOW server_version")).scalar()
    admin.dispose()
    redis_version = bench_redis().info("server").get("redis_version", "unknown")
    return [
        f"CPU: {os.cpu_count()} x {cpu_model}, memory {memory_gib:.1f} GiB",
        f"Python {platform.python_version()}, PostgreSQL {postgres_version}, "
        f"Redis {redis_version}",
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
    ]


def dramatiq_command() -> list[str]:
    """Return the Dramatiq command line of this virtual environment."""
    script = Path(sys.executable).with_name("dramatiq")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dramatiq"]


class WorkerPool:
    """Dramatiq worker processes started with the Dramatiq CLI, in their own session.

    Their output goes to a log file that is kept after the run. ``stop`` sends
    SIGTERM to the main process, then SIGKILL to the pool's process group if it
    has not exited in time.
    """

    def __init__(
        self,
        module: str,
        *,
        processes: int,
        threads: int,
        environment: dict[str, str],
        log_dir: Path,
        label: str,
    ) -> None:
        self.module = module
        self.processes = processes
        self.threads = threads
        self.environment = environment
        self.log_path = log_dir / f"workers-{label}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process_group(self) -> int | None:
        """Return the pool's process group id (its first process's pid)."""
        return self._process.pid if self._process is not None else None

    def start(self, *, ready_timeout_s: float = 60) -> None:
        """Start the processes and wait until each one has polled Redis."""
        # Each worker thread keeps its ledger connection and uses at most one
        # pooled connection at a time. The check leaves a few connections for
        # the benchmark's own polling.
        check_connection_budget(2 * self.processes * self.threads + 5)

        heartbeats_key = f"{NAMESPACE}:__heartbeats__"
        client = bench_redis()
        client.delete(heartbeats_key)
        argv = [
            *dramatiq_command(),
            self.module,
            "--processes",
            str(self.processes),
            "--threads",
            str(self.threads),
            "--worker-shutdown-timeout",
            "10000",
            # As in the Procfile: the worker module configures logging itself, and
            # Dramatiq's own set-up would add a second handler to the root logger.
            "--skip-logging",
        ]
        environment = {**os.environ, **self.environment, "PYTHONPATH": str(ROOT)}

        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        deadline = time.monotonic() + ready_timeout_s
        # Every broker command of a worker process records its heartbeat, so one
        # heartbeat per process means every process is consuming.
        while client.zcard(heartbeats_key) < self.processes:
            if self._process.poll() is not None:
                raise BenchError(
                    f"workers exited with code {self._process.returncode} while "
                    f"starting; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(
                    f"workers not ready after {ready_timeout_s:.0f}s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise BenchError(
                f"workers exited with code {self._process.returncode}; "
                f"see {self.log_path}"
            )

    def stop(self, *, timeout_s: float = 20) -> None:
        """Stop the pool's processes, gracefully first. Safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # Only the main process gets SIGTERM: it passes the signal on to its
        # worker processes, and a second SIGTERM would kill them mid-message.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # The pool runs in its own session, so its process group id is its pid.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def make_log_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"vetqueue-bench-{prefix}-"))


def interrupt_on_signals() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt, so ``finally`` blocks run.

    SIGINT is set explicitly because a shell starts background jobs with SIGINT
    ignored, and Python then keeps it ignored.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)


@contextmanager
def cleanup_on_exit(*cleanups: Callable[[], None]) -> Iterator[None]:
    """Run each cleanup when the block ends, even after an error or Ctrl-C."""
    try:
        yield
    finally:
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - report and go on cleaning
                print(f"cleanup {cleanup.__name__} failed: {exc}", file=sys.stderr)


def wait_for_count(
    count: Callable[[], int],
    target: int,
    *,
    started: float,
    timeout_s: float,
    interval_s: float,
    stall_timeout_s: float = 120,
    on_poll: Callable[[], None] = lambda: None,
    progress_label: str = "",
    progress_every_s: float = 10,
) -> float | None:
    """Poll ``count`` until it reaches ``target``.

    Returns the seconds since ``started`` (a ``time.perf_counter`` value) at the
    first poll that saw the target. Returns None when ``timeout_s`` passed, or
    when the count stayed the same for ``stall_timeout_s``.
    """
    next_progress = started + progress_every_s
    last_value, last_change = -1, started
    while True:
        value = count()
        now = time.perf_counter()
        if value >= target:
            return now - started
        if value != last_value:
            last_value, last_change = value, now
        if now - started > timeout_s:
            print(f"  {progress_label or 'count'}: timed out at {value}/{target}")
            return None
        if now - last_change > stall_timeout_s:
            print(
                f"  {progress_label or 'count'}: stalled at {value}/{target} "
                f"for {stall_timeout_s:.0f}s"
            )
            return None
        on_poll()
        if progress_label and now >= next_progress:
            print(f"  {progress_label}: {value}/{target} after {now - started:.0f}s")
            next_progress += progress_every_s
        time.sleep(interval_s)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds() -> dict[int, tuple[str, int, float]]:
    """Return each process's command name, process group and CPU seconds so far."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        process_group = int(fields[2])
        cpu_seconds = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        processes[int(entry.name)] = (name, process_group, cpu_seconds)
    return processes


def _machine_cpu_seconds() -> float:
    """Return the CPU seconds all cores spent outside idle and I/O wait since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


class CpuUsage:
    """CPU seconds used between ``start`` and ``stop``, by group of processes.

    "workers" are the worker processes, and "worker main" is the pool's main
    process (Dramatiq's CLI), which forwards the workers' log lines. "driver"
    is this process, with the Stripe test server's threads when it runs here.
    "postgres" and "redis" are the servers, and "other" is everything else on
    the machine, including processes that exited during the interval.
    """

    def __init__(self, worker_process_group: int | None) -> None:
        self.worker_process_group = worker_process_group
        self._start: dict[int, tuple[str, int, float]] = {}
        self._machine_start = 0.0
        self.by_group: dict[str, float] = {}
        self.wall_s = 0.0
        self._wall_start = 0.0

    def _group(self, pid: int, name: str, process_group: int) -> str:
        if pid == self.worker_process_group:
            return "worker main"
        if process_group == self.worker_process_group:
            return "workers"
        if pid == os.getpid():
            return "driver"
        if name.startswith("postgres"):
            return "postgres"
        if name.startswith("redis-server"):
            return "redis"
        return "other"

    def start(self) -> None:
        self._start = _process_cpu_seconds()
        self._machine_start = _machine_cpu_seconds()
        self._wall_start = time.perf_counter()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._wall_start
        machine = _machine_cpu_seconds() - self._machine_start
        groups = dict.fromkeys(
            ("workers", "worker main", "driver", "postgres", "redis"), 0.0
        )
        for pid, (name, process_group, seconds) in _process_cpu_seconds().items():
            group = self._group(pid, name, process_group)
            if group == "other":
                continue
            before = self._start.get(pid, (name, process_group, 0.0))[2]
            groups[group] += seconds - before
        groups["other"] = max(0.0, machine - sum(groups.values()))
        self.by_group = groups

    def summary(self) -> str:
        capacity = self.wall_s * (os.cpu_count() or 1)
        parts = ", ".join(
            f"{group} {seconds:.1f}" for group, seconds in self.by_group.items()
        )
        used = sum(self.by_group.values())
        return (
            f"CPU seconds: {parts}; {used:.1f} of {capacity:.1f} available "
            f"({used / capacity:.0%})"
        )


def load_average() -> str:
    one, five, _ = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average {one} (1 min), {five} (5 min)"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format rows as a Markdown table whose columns line up in a terminal."""
    widths = [
        max(len(str(cell)) for cell in column)
        for column in zip(headers, *rows, strict=True)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = (
            str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])
