"""Serve localstripe on 127.0.0.1, with its state file in a folder of our own.

The CLI of localstripe 1.15.10 binds every interface (``::``) and pickles its store to
the fixed path ``/tmp/localstripe.pickle``, which processes on the same machine share.
This wrapper serves the same aiohttp app on 127.0.0.1 only and keeps the pickle in
``--state-dir`` (a new temporary folder when the option is absent).

Behaviour seen with stripe-python 16.1.0 against localstripe 1.15.10:

- ``pm_card_visa`` attaches to a customer (each attach returns a new ``pm_`` id) and
  a confirmed off-session PaymentIntent with it ends in status ``succeeded``.
- ``pm_card_chargeCustomerFail``, or a PaymentMethod created with card number
  4000000000000341, attaches fine and fails only when charged. The PaymentIntent
  create then returns HTTP 402, so the SDK raises ``stripe.CardError`` with
  ``code == "card_declined"`` and ``error.decline_code is None``. The error body has
  ``type: "invalid_request_error"`` (Stripe sends ``card_error``), a ``charge`` id
  and no ``payment_intent``.
- Card 4000000000000002 (also ``pm_card_visa_chargeDeclined``) is declined at attach
  time with the same 402 and no decline code. Charged without attaching, it succeeds.
- ``pm_card_chargeDeclined`` and the other ``pm_card_chargeDeclined*`` ids are unknown
  (HTTP 404, ``stripe.InvalidRequestError``).
- ``Idempotency-Key`` is ignored: two creates with the same key make two
  PaymentIntents. ``devservers.stripe_server`` models keys and decline codes.

Run it with ``python -m devservers.localstripe_server --port N [--state-dir DIR]``.
It prints one line with its URL once it listens and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# localstripe's own CLI listens on 8420 by default.
DEFAULT_PORT = 8420
STATE_FILE_NAME = "localstripe.pickle"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _redirect_state_file(state_file: Path) -> None:
    """Point localstripe's store persistence at ``state_file``.

    localstripe's ``Store`` hard-codes ``/tmp/localstripe.pickle`` in
    ``dump_to_disk`` and ``try_load_from_disk``, so TMPDIR has no effect. The
    replacements go on the class, not the instance, because the store pickles its
    instance ``__dict__`` and a closure there cannot be pickled.
    """
    from localstripe import resources

    def dump_to_disk(self: resources.Store) -> None:
        # Write then rename, so a kill during the write leaves the last whole state.
        partial_file = state_file.with_suffix(".tmp")
        with partial_file.open("wb") as file:
            pickle.dump(self, file, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial_file, state_file)

    def try_load_from_disk(self: resources.Store) -> None:
        try:
            with state_file.open("rb") as file:
                saved = pickle.load(file)
        except FileNotFoundError:
            return
        self.clear()
        self.update(saved)

    resources.Store.dump_to_disk = dump_to_disk
    resources.Store.try_load_from_disk = try_load_from_disk


async def _serve(*, port: int, state_dir: Path) -> None:
    _redirect_state_file(state_dir / STATE_FILE_NAME)

    from aiohttp import web
    from localstripe.resources import store
    from localstripe.server import app

    store.try_load_from_disk()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access"))
    await runner.setup()
    await web.SockSite(runner, listener).start()

    # Handlers go in before the URL is printed, because a caller may signal as soon
    # as it reads the URL.
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop_requested.set)

    url = f"http://{HOST}:{listener.getsockname()[1]}"
    logger.info("localstripe listening on %s, state in %s", url, state_dir)
    print(url, flush=True)
    await stop_requested.wait()

    logger.info("localstripe on %s stopping", url)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Serve localstripe on 127.0.0.1 until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m devservers.localstripe_server",
        description="Run localstripe bound to 127.0.0.1 only.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on, 0 for any free port (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="folder for localstripe.pickle, loaded at start if present "
        "(default: a new temporary folder, deleted on exit)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level for the messages and access log written to stderr",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )

    if args.state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="localstripe-"))
        remove_state_dir = True
    else:
        state_dir = args.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        remove_state_dir = False

    try:
        asyncio.run(_serve(port=args.port, state_dir=state_dir))
    finally:
        if remove_state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)


def start_localstripe(
    port: int | None = None,
    *,
    state_dir: Path | None = None,
    timeout: float = 20.0,
) -> tuple[subprocess.Popen[str], str]:
    """Start localstripe in a subprocess and wait until it responds to API requests.

    ``port=None`` picks a free port. Returns the process, which the caller must
    terminate, and the server's base URL. Raises ``RuntimeError`` if the process
    exits during start-up and ``TimeoutError`` if it does not respond within
    ``timeout`` seconds. The child's stderr is inherited, so its log shows why.
    """
    command = [sys.executable, "-m", "devservers.localstripe_server"]
    command += ["--port", str(port or 0)]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    # The child must import devservers even when the project is not installed.
    environment = dict(os.environ)
    python_path = [str(_PROJECT_ROOT), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(part for part in python_path if part)

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=environment
    )
    deadline = time.monotonic() + timeout
    try:
        url = _read_url_line(process, deadline=deadline)
        _wait_until_responding(url, process=process, deadline=deadline)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, url


def _read_url_line(process: subprocess.Popen[str], *, deadline: float) -> str:
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()
    # readline() has no timeout, so a daemon thread reads and the wait is bounded here.
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
    except queue.Empty:
        raise TimeoutError(
            "localstripe did not report its URL in time; see its log on stderr"
        ) from None
    # The child prints nothing else to stdout.
    stdout.close()
    if not line:
        returncode = process.wait()
        raise RuntimeError(
            f"localstripe exited with code {returncode} during start-up; "
            "see its log on stderr"
        )
    return line.strip()


def _wait_until_responding(
    url: str, *, process: subprocess.Popen[str], deadline: float
) -> None:
    request = urllib.request.Request(
        f"{url}/v1/customers?limit=1",
        headers={"Authorization": "Bearer sk_test_startup_probe"},
    )
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"localstripe exited with code {process.returncode} during "
                "start-up; see its log on stderr"
            )
        try:
            with urllib.request.urlopen(request, timeout=2.0):
                return
        except urllib.error.HTTPError:
            # Any HTTP status shows that the server is up.
            return
        except (urllib.error.URLError, OSError) as error:
            last_error = error
            time.sleep(0.05)
    raise TimeoutError(
        f"localstripe at {url} did not respond before the deadline: {last_error}"
    )


if __name__ == "__main__":
    main()
