"""The database engine and transactions."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg import pq
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from infra.settings import get_settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

_pool_pre_ping = True


def disable_pool_pre_ping() -> None:
    """Stop testing pooled connections before use, for engines built from now on.

    The test is a round trip on every checkout, and a worker checks out a
    connection several times per message. Workers can do without it: a job
    that meets a connection the server dropped fails and is retried, and the
    pool is then replaced (by SQLAlchemy for sessions, by ``driver_autocommit``
    for driver connections). The web app keeps the
    test, so that a request does not fail on a connection left over from
    before a database restart.
    """
    global _pool_pre_ping
    _pool_pre_ping = False
    reset_engine()


# libpq options that end a connection whose server went away without closing
# it (a host that died, a network partition). A request waits at most
# tcp_user_timeout for its data to be acknowledged, and an idle pooled
# connection is found dead after about a minute of unanswered keepalives.
# NOTE: a server that still acknowledges packets but never replies (a
# stopped process on a live host) is not caught by these options.
NETWORK_FAILURE_LIMITS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _connect_args(*, synchronous_commit: bool = True) -> dict[str, Any]:
    # A statement stuck behind a lock must fail and be retried rather than
    # hold a worker thread past its time limit.
    options = "-c statement_timeout=30000 -c lock_timeout=10000"
    if not synchronous_commit:
        options += " -c synchronous_commit=off"
    return {"options": options, "connect_timeout": 5, **NETWORK_FAILURE_LIMITS}


@functools.cache
def get_engine() -> Engine:
    """Return the process's engine, created on first use from the settings."""
    settings = get_settings()
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=_pool_pre_ping,
        connect_args=_connect_args(),
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
def driver_autocommit() -> Iterator[psycopg.Connection]:
    """Lend a pooled psycopg connection on which every statement commits on its own.

    For the few statements that every job runs: going to the driver directly
    skips SQLAlchemy's Connection and its parameter and result processing,
    which cost about as much client CPU as the round trip. When a connection
    turns out closed, it is dropped and the pool is replaced, so the other
    pooled connections from before a database restart are not lent again.
    """
    pooled = get_engine().raw_connection()
    conn: psycopg.Connection = pooled.driver_connection
    try:
        conn.autocommit = True
        yield conn
    except Exception:
        if conn.closed or conn.broken:
            pooled.invalidate()
            # The server most likely restarted, so the other idle connections
            # are closed too. A new pool opens fresh ones, as SQLAlchemy's own
            # disconnect handling does for sessions.
            get_engine().dispose()
        raise
    finally:
        if pooled.is_valid:
            try:
                conn.autocommit = False
            except psycopg.Error:
                # Lent again in autocommit, it would commit a transaction's
                # statements one by one.
                pooled.invalidate()
        pooled.close()


LEDGER_APPLICATION_NAME = "vetqueue-ledger"


class _LedgerConnection(NamedTuple):
    """A thread's ledger connection, its cursor, and the settings generation."""

    generation: int
    connection: psycopg.Connection
    cursor: psycopg.Cursor[Any]


_thread = threading.local()
# reset_engine increments this, so that each thread replaces its ledger
# connection, opened with earlier settings, the next time it needs one.
_ledger_generation = 0


@contextmanager
def ledger_cursor() -> Iterator[psycopg.Cursor[Any]]:
    """Lend this thread's own cursor for the ledger's bookkeeping updates.

    Every message runs two of them: the claim before the job and its outcome
    (or its deferral) after it. They run on a connection the thread keeps,
    outside the pool, in autocommit and with ``synchronous_commit`` off, so
    a commit returns before its WAL record reaches the disk. That saves a
    pool checkout and a disk flush per statement, about 40% of the two
    statements' PostgreSQL CPU (``python -m bench.ledger_statements``).

    A PostgreSQL crash can lose only the most recent of these updates. The
    WAL writer flushes them within three ``wal_writer_delay`` periods (600 ms
    by default, per the manual's "Asynchronous Commit" page), and a durable
    commit flushes every earlier record with its own. So a claim is durable
    once its job commits any work. A lost update leaves the row as it was,
    and the sweeper sends the job again as after a worker death. Jobs are
    idempotent, so running one again is safe. A job's own work, including a
    success it records in its own statement, commits durably. So do failed
    outcomes, which only an operator's retry may undo, and every other
    statement.

    The cursor is kept too, which saves about a quarter of the client CPU of
    each statement. A connection that failed is closed, and the next use
    opens a new one.
    """
    ledger: _LedgerConnection | None = getattr(_thread, "ledger", None)
    if ledger is not None and (
        ledger.generation != _ledger_generation or ledger.connection.closed
    ):
        close_ledger_connection()
        ledger = None
    if ledger is None:
        conn = _open_ledger_connection()
        ledger = _LedgerConnection(
            _ledger_generation, conn, conn.cursor(row_factory=namedtuple_row)
        )
        _thread.ledger = ledger
    try:
        yield ledger.cursor
    except Exception:
        if ledger.connection.closed or ledger.connection.broken:
            close_ledger_connection()
        raise


def retry_once_if_disconnected(
    lend: Callable[[], AbstractContextManager[Any]],
    operation: Callable[[Any], T],
) -> T:
    """Run ``operation`` on a target from ``lend``, once more if its connection closed.

    A connection kept between messages, or pooled without a test before use,
    is found closed only when a statement fails on it: after a database
    restart, or when an operator ended its backend. The operation then runs
    once more, on the new connection that ``lend`` opens. A failure on a
    connection that is still usable (a statement timeout, say), or a second
    failure, is raised.

    NOTE: if the connection broke after the server committed the statement,
    the statement runs twice. The ledger's claim and finish are guarded
    updates: a second claim finds the job running and skips the message,
    which the sweeper sends again once the lease expires, and a second
    finish updates no row.
    """
    lent: list[Any] = []

    def attempt() -> T:
        with lend() as target:
            lent.append(target)
            return operation(target)

    try:
        return attempt()
    except psycopg.OperationalError:
        if not lent:
            raise
        conn = lent[-1].connection if isinstance(lent[-1], psycopg.Cursor) else lent[-1]
        if not (conn.closed or conn.broken):
            raise
        logger.warning(
            "database connection was closed by the server; running the statement"
            " again on a new connection",
            exc_info=True,
        )
        return attempt()


def _open_ledger_connection() -> psycopg.Connection:
    engine = get_engine()
    _, params = engine.dialect.create_connect_args(engine.url)
    params.update(_connect_args(synchronous_commit=False))
    # Names the connections in pg_stat_activity, unless DATABASE_URL does.
    params.setdefault("application_name", LEDGER_APPLICATION_NAME)
    return psycopg.connect(autocommit=True, **params)


def close_ledger_connection() -> None:
    """Close this thread's ledger connection, if it has one."""
    ledger: _LedgerConnection | None = getattr(_thread, "ledger", None)
    _thread.ledger = None
    if ledger is not None:
        ledger.connection.close()


def run_sql(
    target: psycopg.Connection | psycopg.Cursor[Any] | Connection | Session,
    sql: str,
    params: Mapping[str, Any],
) -> tuple[list[Any], int]:
    """Run SQL written in psycopg's parameter style; return its rows and row count.

    ``target`` is a connection from ``driver_autocommit``, the cursor from
    ``ledger_cursor`` or, where a caller needs the statement in its own
    transaction, a Core connection or a session. Rows allow attribute access
    by column name in every case.
    """
    if isinstance(target, Session):
        target = target.connection()
    if isinstance(target, Connection):
        result = target.exec_driver_sql(sql, dict(params))
        rows = list(result) if result.returns_rows else []
        return rows, result.rowcount
    if isinstance(target, psycopg.Cursor):
        return _execute(target, sql, params)
    with target.cursor(row_factory=namedtuple_row) as cursor:
        return _execute(cursor, sql, params)


def _execute(
    cursor: psycopg.Cursor[Any], sql: str, params: Mapping[str, Any]
) -> tuple[list[Any], int]:
    cursor.execute(sql, params)
    # The result status shows whether rows came back. Reading
    # ``cursor.description`` instead builds a column object per field.
    result = cursor.pgresult
    returned_rows = result is not None and result.status == pq.ExecStatus.TUPLES_OK
    rows = cursor.fetchall() if returned_rows else []
    return rows, cursor.rowcount


def reset_engine() -> None:
    """Dispose of the engine so the next use builds one from current settings."""
    global _ledger_generation
    _ledger_generation += 1
    close_ledger_connection()
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    _session_factory.cache_clear()
