"""Fixtures shared by every test: a migrated test database, a Redis database of
the tests' own, the broker, in-process workers and the Stripe test server.

Tests need the real PostgreSQL and Redis servers. When one does not respond,
the session stops with an error instead of skipping tests.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

TEST_DATABASE = os.environ.get("VETQUEUE_TEST_DATABASE", "vetqueue_test")
if TEST_DATABASE in ("vetqueue", "vetqueue_demo"):
    raise RuntimeError(f"refusing to run tests against database {TEST_DATABASE!r}")
SERVER_URL = os.environ.get(
    "VETQUEUE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432"
)
REDIS_TEST_URL = os.environ.get("VETQUEUE_TEST_REDIS", "redis://127.0.0.1:6379/14")

# Set before any settings object exists, so every process the tests start
# (in-process or as a subprocess with this environment) uses the test servers.
TEST_ENVIRONMENT = {
    "DATABASE_URL": f"{SERVER_URL}/{TEST_DATABASE}",
    "REDIS_URL": REDIS_TEST_URL,
    "REDIS_TIMEOUT_S": "2",
    "DRAMATIQ_NAMESPACE": "vetqueue-test",
    "STRIPE_API_KEY": "sk_test_vetqueue",
    "STRIPE_CONNECT_TIMEOUT_S": "1",
    "STRIPE_READ_TIMEOUT_S": "2",
    "STRIPE_SLOT_WAIT_S": "2",
    "CHARGE_TIME_BUDGET_S": "6",
    "LEASE_GRACE_S": "1",
    "SWEEP_AFTER_S": "1",
    "RETRY_MIN_BACKOFF_S": "0.2",
    "LOG_LEVEL": "INFO",
}
os.environ.update(TEST_ENVIRONMENT)

import dramatiq  # noqa: E402
import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from alembic.config import Config  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from alembic import command  # noqa: E402
from devservers.stripe_server import StripeTestServer  # noqa: E402
from infra.db import reset_engine, transaction  # noqa: E402
from infra.redis import get_redis  # noqa: E402
from infra.settings import get_settings  # noqa: E402
from infra.stripe_client import get_stripe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = (
    "charge_attempts",
    "platform_invoices",
    "notifications",
    "jobs",
    "api_keys",
    "tenants",
)


def reconfigure(**environment: str) -> None:
    """Apply environment changes and rebuild every cached client from them."""
    from actors import stripe_calls

    os.environ.update(environment)
    get_settings.cache_clear()
    get_stripe.cache_clear()
    get_redis.cache_clear()
    stripe_calls._limiter.cache_clear()
    reset_engine()


def wait_for(
    predicate: Callable[[], object], *, timeout_s: float = 30, interval_s: float = 0.05
) -> object:
    """Poll until ``predicate`` returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s: {predicate}")
        time.sleep(interval_s)


def closed_port() -> int:
    """Return a loopback port with no listener, so connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_worker_until(
    broker: dramatiq.Broker, predicate: Callable[[], object], *, timeout_s: float
) -> None:
    """Run an in-process worker on every queue until ``predicate`` holds."""
    worker = dramatiq.Worker(broker, worker_threads=4)
    worker.start()
    try:
        wait_for(predicate, timeout_s=timeout_s)
    finally:
        worker.stop()


def alembic_config(database_url: str) -> Config:
    config = Config(os.path.join(ROOT, "alembic.ini"))
    config.set_main_option("script_location", os.path.join(ROOT, "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def _require_postgres() -> sa.Engine:
    admin = sa.create_engine(f"{SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.exit(
            f"PostgreSQL does not respond at {SERVER_URL}: {exc}. Start it "
            "(see README) or set VETQUEUE_TEST_POSTGRES.",
            returncode=3,
        )
    return admin


def _require_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.exit(
            f"Redis does not respond at {REDIS_TEST_URL}: {exc}. Start it "
            "(see README) or set VETQUEUE_TEST_REDIS.",
            returncode=3,
        )


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """Create the test database afresh and migrate it with ``alembic upgrade head``."""
    admin = _require_postgres()
    with admin.connect() as connection:
        connection.execute(
            sa.text(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
        )
        connection.execute(sa.text(f'CREATE DATABASE "{TEST_DATABASE}"'))
    admin.dispose()

    url = TEST_ENVIRONMENT["DATABASE_URL"]
    command.upgrade(alembic_config(url), "head")
    yield url
    reset_engine()


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[StripeTestServer]:
    """The project's Stripe test server, shared by the session and reset per test."""
    server = StripeTestServer().start()
    reconfigure(STRIPE_API_BASE=server.url)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker(database: str, stripe_server: StripeTestServer) -> dramatiq.Broker:
    from actors.broker import setup_broker

    _require_redis()
    broker = setup_broker()
    broker.emit_after("process_boot")
    return broker


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty the tables, the tests' Redis database and the Stripe test server."""
    if "broker" not in request.fixturenames and "db" not in request.fixturenames:
        yield
        return
    with transaction() as session:
        session.execute(
            sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        )
    # The tests own this Redis database number, so emptying it touches nothing else.
    get_redis().flushdb()
    server = request.getfixturevalue("stripe_server")
    server.reset()
    yield


@pytest.fixture
def db(database: str, stripe_server: StripeTestServer) -> Iterator[Session]:
    """A session for arranging and checking rows; each block commits on its own."""
    with transaction() as session:
        yield session


@pytest.fixture
def worker(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    """An in-process worker consuming every queue with a few threads."""
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop()
