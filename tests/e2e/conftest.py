"""Helpers for tests that run vetqueue's real processes as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

VENV_BIN = os.path.dirname(sys.executable)


class Spawned(subprocess.Popen):
    """A started process whose standard error is written to ``log_path``."""

    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    """Start a process in its own process group with the tests' environment.

    Every process still running when the test ends is killed with its group.
    """
    started: list[Spawned] = []

    def start(*command: str) -> Spawned:
        log_path = tmp_path / f"process-{len(started)}.log"
        with log_path.open("w") as log:
            process = Spawned(
                command,
                cwd=ROOT,
                env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"},
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        process.log_path = log_path
        started.append(process)
        return process

    yield start

    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def worker_command(*queues: str, threads: int = 2) -> list[str]:
    return [
        os.path.join(VENV_BIN, "dramatiq"),
        "actors.worker",
        "--processes",
        "1",
        "--threads",
        str(threads),
        "--queues",
        *queues,
    ]
