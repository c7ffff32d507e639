"""Helpers for tests that run vetqueue's real processes as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import ROOT

VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a process in its own process group with the tests' environment.

    Every process still running when the test ends is killed with its group.
    """
    started: list[subprocess.Popen] = []

    def start(*command: str) -> subprocess.Popen:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
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
