"""The demo's processes, logging to .demo/ and stopped when the demo ends or fails."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from scripts.demo_setup import (
    HOST,
    LOCALSTRIPE_STATE_DIR,
    ROOT,
    STATE_DIR,
    DemoError,
    log_tail,
)

START_TIMEOUT_S = 30.0
# Longer than the worker's own --worker-shutdown-timeout below, so a worker
# that finishes its in-flight messages in time exits before it is killed.
STOP_TIMEOUT_S = 15.0
WORKER_SHUTDOWN_TIMEOUT_MS = 10_000


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, what: str, stack: Stack
) -> None:
    """Poll ``check`` every 0.2 s until it returns True.

    Raises DemoError on timeout, or as soon as a process of ``stack`` exits.
    """
    deadline = time.monotonic() + timeout_s
    while not check():
        stack.check_running()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def http_status(url: str, *, headers: dict[str, str] | None = None) -> int | None:
    """Return the HTTP status of a GET request, or None if the connection fails."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


@dataclasses.dataclass
class Service:
    """A process the demo started, in a session of its own, and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class Stack:
    """The processes of the demo, stopped in reverse order when the block exits."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.services: list[Service] = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, name: str, arguments: list[str]) -> None:
        """Start ``python ARGUMENTS`` with the demo environment, logging to .demo/."""
        log_path = STATE_DIR / f"{name}.log"
        log_file = log_path.open("wb")
        # A session of its own keeps a Ctrl-C in the terminal from reaching the
        # process, so the demo stops it with one SIGTERM in its own order.
        process = subprocess.Popen(
            [sys.executable, *arguments],
            cwd=ROOT,
            env=self.environment,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.services.append(Service(name, process, log_path, log_file))

    def check_running(self) -> None:
        """Raise DemoError if a started process has exited."""
        for service in self.services:
            code = service.process.poll()
            if code is not None:
                raise DemoError(
                    f"{service.name} (pid {service.process.pid}) exited with code "
                    f"{code}:\n" + log_tail(service.log_path)
                )

    def stop(self) -> None:
        """Send SIGTERM to each process, then SIGKILL to what is left after a wait.

        Only the process the demo started gets SIGTERM: Dramatiq and gunicorn
        stop their own children, and a second signal would make Dramatiq exit
        without finishing its messages. SIGKILL goes to the whole process group.
        """
        # A second Ctrl-C must not cut the stop short: the processes run in
        # sessions of their own and would be left running.
        handlers = {
            number: signal.signal(number, signal.SIG_IGN)
            for number in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._stop_all()
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)

    def _stop_all(self) -> None:
        for service in reversed(self.services):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
            else:
                # The process died on its own; stop the children it left.
                _signal_group(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in reversed(self.services):
            try:
                service.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(
                    f"{service.name} (pid {service.process.pid}) did not stop within "
                    f"{STOP_TIMEOUT_S:.0f}s of SIGTERM; sending SIGKILL",
                    file=sys.stderr,
                )
            _signal_group(service.process.pid, signal.SIGKILL)
            service.process.wait()
            service.log_file.close()
        self.services.clear()


def _signal_group(group_id: int, signal_number: int) -> None:
    """Signal every process left in a group the demo started, if any is left.

    Each group was created for one process of the demo, and its id is that
    process's pid. Linux hands out pids in increasing order and wraps around
    only at pid_max, so a group id freed seconds ago is not in use again.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group_id, signal_number)


def start_localstripe(stack: Stack, port: int) -> str:
    """Start localstripe with its state in .demo/localstripe and return its URL."""
    url = f"http://{HOST}:{port}"
    stack.start(
        "localstripe",
        [
            "-m",
            "devservers.localstripe_server",
            "--port",
            str(port),
            "--state-dir",
            str(LOCALSTRIPE_STATE_DIR),
        ],
    )
    # Any HTTP status, 401 included, shows that the server is up.
    wait_until(
        lambda: http_status(f"{url}/v1/customers?limit=1") is not None,
        timeout_s=START_TIMEOUT_S,
        what=f"localstripe at {url}",
        stack=stack,
    )
    return url


def start_web(stack: Stack, port: int) -> str:
    """Start the API under gunicorn and wait until /readyz returns 200."""
    url = f"http://{HOST}:{port}"
    stack.start(
        "web",
        [
            "-m",
            "gunicorn",
            "--config",
            "python:web.gunicorn_config",
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--timeout",
            "30",
            # gunicorn 27 otherwise opens a control socket at one fixed path in
            # the home folder, shared with every other gunicorn of the user.
            "--no-control-socket",
            "web:create_app()",
        ],
    )
    wait_until(
        lambda: http_status(f"{url}/readyz") == 200,
        timeout_s=START_TIMEOUT_S,
        what=f"the API at {url}/readyz to return 200",
        stack=stack,
    )
    return url


def start_worker_and_scheduler(stack: Stack) -> None:
    """Start one worker process consuming every queue, and the scheduler."""
    stack.start(
        "worker",
        [
            "-m",
            "dramatiq",
            "actors.worker",
            "--processes",
            "1",
            "--threads",
            "8",
            "--skip-logging",
            "--worker-shutdown-timeout",
            str(WORKER_SHUTDOWN_TIMEOUT_MS),
        ],
    )
    stack.start("scheduler", ["-m", "scheduler"])
