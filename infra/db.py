"""The database engine and transactions."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from infra.settings import get_settings


@functools.cache
def get_engine() -> Engine:
    """Return the process's engine, created on first use from the settings."""
    settings = get_settings()
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
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


def reset_engine() -> None:
    """Dispose of the engine so the next use builds one from current settings."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    _session_factory.cache_clear()
