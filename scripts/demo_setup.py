"""Set-up of the demo: its servers, database, Redis keys and environment.

The demo keeps to resources of its own: the PostgreSQL database
``vetqueue_demo``, Redis database 1 with the key prefix ``vetqueue-demo``, and
the folder ``.demo/`` for logs and the localstripe state.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from infra.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".demo"
LOCALSTRIPE_STATE_DIR = STATE_DIR / "localstripe"

HOST = "127.0.0.1"
POSTGRES_SERVER = f"postgresql://postgres@{HOST}:5432"
DATABASE = "vetqueue_demo"
DATABASE_URL = f"{POSTGRES_SERVER}/{DATABASE}"
REDIS_URL = f"redis://{HOST}:6379/1"
DRAMATIQ_NAMESPACE = "vetqueue-demo"
STRIPE_API_KEY = "sk_test_vetqueue_demo"

MIGRATE_TIMEOUT_S = 120.0


class DemoError(Exception):
    """A step of the demo failed; the message names the step and what to do."""


def check_servers() -> None:
    """Run scripts/services.sh, which starts PostgreSQL or Redis if one is down."""
    script = ROOT / "scripts" / "services.sh"
    result = subprocess.run(["bash", str(script)], cwd=ROOT, check=False)
    if result.returncode != 0:
        raise DemoError(
            f"{script.relative_to(ROOT)} exited with code {result.returncode}: "
            "PostgreSQL or Redis is not available (its output above says which)"
        )


def create_database() -> bool:
    """Create the database ``vetqueue_demo`` if it is missing; return whether it did."""
    try:
        with psycopg.connect(
            f"{POSTGRES_SERVER}/postgres", autocommit=True, connect_timeout=5
        ) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if exists:
                return False
            connection.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE))
            )
    except psycopg.Error as error:
        raise DemoError(f"creating database {DATABASE} failed: {error}") from error
    print(f"Created database {DATABASE}.")
    return True


def clear_demo_queues() -> None:
    """Delete the demo's broker keys (prefix ``vetqueue-demo:``) in Redis database 1.

    Called when the demo database is new: messages, delayed retries and dead
    letters left from an earlier database refer to jobs that no longer exist.
    Keys outside the prefix are left alone.
    """
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{DRAMATIQ_NAMESPACE}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError as error:
        raise DemoError(
            f"clearing the demo queues in {REDIS_URL} failed: {error}"
        ) from error
    finally:
        client.close()
    if keys:
        print(f"Redis keys left from an earlier demo database deleted: {len(keys)}.")


def migrate(environment: dict[str, str]) -> None:
    """Run ``alembic upgrade head`` on the demo database, logging to .demo/."""
    log_path = STATE_DIR / "alembic.log"
    command = [sys.executable, "-m", "alembic", "upgrade", "head"]
    with log_path.open("w") as log:
        try:
            result = subprocess.run(
                command,
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"alembic upgrade head timed out after {MIGRATE_TIMEOUT_S:.0f}s; "
                f"see {log_path}"
            ) from None
    if result.returncode != 0:
        raise DemoError(
            f"alembic upgrade head failed with code {result.returncode}:\n"
            + log_tail(log_path)
        )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def demo_environment(*, stripe_api_base: str) -> dict[str, str]:
    """Return this process's environment with the demo's vetqueue settings.

    Every variable that ``infra.settings.Settings`` reads is dropped first, so
    settings exported in the shell cannot point the demo at other servers.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in Settings.model_fields
    }
    environment.update(
        DATABASE_URL=DATABASE_URL.replace("postgresql://", "postgresql+psycopg://"),
        DB_POOL_SIZE="5",
        REDIS_URL=REDIS_URL,
        DRAMATIQ_NAMESPACE=DRAMATIQ_NAMESPACE,
        STRIPE_API_BASE=stripe_api_base,
        STRIPE_API_KEY=STRIPE_API_KEY,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return environment


def log_tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file, indented, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"    ({path} does not exist)"
    tail = text.splitlines()[-lines:]
    if not tail:
        return f"    ({path} is empty)"
    return "\n".join(f"    {line}" for line in tail) + f"\n    (full log: {path})"
