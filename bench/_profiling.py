"""Per-thread cProfile of Dramatiq worker processes, for finding hot spots.

``ThreadProfiler`` profiles every worker and consumer thread of a process by
CPU time (``time.thread_time``), so time spent waiting for PostgreSQL, Redis,
Stripe or the GIL is left out, and writes one pstats file per thread when the
thread stops. cProfile slows the profiled code down, so times measured with it
are not comparable with unprofiled runs.

``python -m bench._profiling DIR`` merges the files in DIR and prints the
functions with the most CPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import threading
import time
from pathlib import Path

import dramatiq
from dramatiq.middleware import Middleware

PROFILE_DIR_VARIABLE = "VETQUEUE_BENCH_PROFILE_DIR"


class ThreadProfiler(Middleware):
    """Profiles each worker and consumer thread from its start until it stops."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._local = threading.local()

    def _start(self) -> None:
        profile = cProfile.Profile(time.thread_time)
        self._local.profile = profile
        profile.enable()

    def _write(self, kind: str) -> None:
        profile = getattr(self._local, "profile", None)
        if profile is None:
            return
        profile.disable()
        name = f"{kind}-{os.getpid()}-{threading.get_ident()}.prof"
        profile.dump_stats(self.directory / name)

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread) -> None:
        self._start()

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread) -> None:
        self._write("worker")

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread) -> None:
        self._start()

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread) -> None:
        self._write("consumer")


def print_profile(directory: Path, *, limit: int = 30) -> None:
    """Merge the pstats files in ``directory`` and print the top functions."""
    files = sorted(str(path) for path in directory.glob("*.prof"))
    if not files:
        print(f"no profiles in {directory}")
        return
    stats = pstats.Stats(*files)
    stats.strip_dirs()
    print(f"{len(files)} thread profiles, {stats.total_tt:.1f} CPU seconds in all")
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench._profiling",
        description="Print the merged per-thread CPU profiles of worker processes.",
    )
    parser.add_argument("directory", type=Path, help="folder of .prof files")
    parser.add_argument(
        "--limit", type=int, default=30, help="functions per list (default 30)"
    )
    args = parser.parse_args()
    print_profile(args.directory, limit=args.limit)


if __name__ == "__main__":
    main()
