"""The database engine and transactions."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from infra.settings import get_settings

_pool_pre_ping = True


def disable_pool_pre_ping() -> None:
    """Stop testing pooled connections before use, for engines built from now on.

    The test is a round trip on every checkout, and a worker checks out a
    connection several times per message. Workers can do without it: a job
    that meets a connection the server dropped fails and is retried, and
    SQLAlchemy then replaces every pooled connection. The web app keeps the
    test, so that a request never fails on a connection left over from
    before a database restart.
    """
    global _pool_pre_ping
    _pool_pre_ping = False
    reset_engine()


@functools.cache
def get_engine() -> Engine:
    """Return the process's engine, created on first use from the settings."""
    settings = get_settings()
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=_pool_pre_ping,
        # A statement stuck behind a lock must fail and be retried rather than
        # hold a worker thread past its time limit.
        connect_args={
            "options": "-c statement_timeout=30000 -c lock_timeout=10000",
            "connect_timeout": 5,
        },
    )


@functools.cache
def _session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def transaction() -> Iterator[Session]:
    """Open a session, commit when the block ends, roll back on any exception."""
    session = _session_factory()()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


@contextmanager
def connection() -> Iterator[Connection]:
    """Open a Core connection in a transaction that commits when the block ends.

    Cheaper than a session for a few prebuilt statements on a hot path.
    """
    with get_engine().begin() as conn:
        yield conn


@contextmanager
def autocommit() -> Iterator[Connection]:
    """Open a Core connection on which every statement commits on its own.

    A single statement needs no BEGIN and COMMIT around it, which saves two
    of its three round trips. Use it only where each statement is a whole
    unit of work.
    """
    with get_engine().connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def reset_engine() -> None:
    """Dispose of the engine so the next use builds one from current settings."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    _session_factory.cache_clear()
