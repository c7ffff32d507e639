"""Driver connections: pooled ones and the ledger's own, dead ones replaced."""

from __future__ import annotations

import socket
import threading

import dramatiq
import psycopg
import pytest
from sqlalchemy import text

from actors.ledger import enqueue
from infra import db
from infra.db import (
    close_ledger_connection,
    driver_autocommit,
    ledger_cursor,
    retry_once_if_disconnected,
    run_sql,
    transaction,
)
from infra.settings import get_settings
from tests.conftest import wait_for
from tests.factories import all_jobs_finished


@pytest.fixture
def without_pre_ping(database):
    """Build the engine as worker processes do, and restore it afterwards."""
    db.disable_pool_pre_ping()
    yield
    db._pool_pre_ping = True
    db.reset_engine()


def admin_connection() -> psycopg.Connection:
    """A connection of its own, outside the pool under test."""
    url = get_settings().database_url.replace("+psycopg", "", 1)
    return psycopg.connect(url, autocommit=True)


def backend_alive(pid: int) -> bool:
    with admin_connection() as admin:
        cursor = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
        )
        return cursor.fetchone()[0] == 1


def test_lent_connection_resets_autocommit(without_pre_ping):
    with driver_autocommit() as conn:
        lent_pid = conn.info.backend_pid
        rows, _ = run_sql(conn, "SELECT %(n)s::int + 1 AS total", {"n": 41})
    assert rows[0].total == 42

    # The pool contains one connection, so the transaction gets the one just
    # lent. In autocommit, the table would stay after the rollback.
    with pytest.raises(RuntimeError), transaction() as session:
        assert session.connection().connection.driver_connection.autocommit is False
        assert session.scalar(text("SELECT pg_backend_pid()")) == lent_pid
        session.execute(text("CREATE TABLE lent_connection_check (id int)"))
        raise RuntimeError("roll back")
    with transaction() as session:
        assert (
            session.scalar(text("SELECT to_regclass('lent_connection_check')")) is None
        )


def test_killed_connection_is_dropped(without_pre_ping):
    with driver_autocommit() as conn:
        pid = conn.info.backend_pid
    with admin_connection() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_for(lambda: not backend_alive(pid))

    with pytest.raises(psycopg.OperationalError), driver_autocommit() as conn:
        assert conn.info.backend_pid == pid
        conn.execute("SELECT 1")

    with driver_autocommit() as conn:
        rows, _ = run_sql(conn, "SELECT pg_backend_pid() AS pid", {})
    assert rows[0].pid != pid


def test_pool_replaced_after_disconnect(without_pre_ping):
    with driver_autocommit() as first, driver_autocommit() as second:
        old_pids = {first.info.backend_pid, second.info.backend_pid}
    with driver_autocommit() as third:
        old_pids.add(third.info.backend_pid)
    with admin_connection() as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", [list(old_pids)]
        )
    wait_for(lambda: not any(backend_alive(pid) for pid in old_pids))

    failures = 0
    new_pids = set()
    for _ in range(3):
        try:
            with driver_autocommit() as conn:
                new_pids.add(backend_pid(conn))
        except psycopg.OperationalError:
            failures += 1

    assert failures == 1
    assert new_pids
    assert not new_pids & old_pids


def test_pooled_connections_limit_network_waits(database):
    with driver_autocommit() as conn:
        options = {
            option.keyword.decode(): option.val
            for option in conn.pgconn.info
            if option.val is not None
        }
        sock = socket.socket(fileno=conn.pgconn.socket)
        try:
            keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            user_timeout_ms = sock.getsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT
            )
        finally:
            sock.detach()

    assert options["tcp_user_timeout"] == b"30000"
    assert options["keepalives_idle"] == b"30"
    assert keepalive == 1
    assert user_timeout_ms == 30_000


def show(target: psycopg.Connection | psycopg.Cursor, setting: str) -> str:
    return target.execute(f"SHOW {setting}").fetchone()[0]


def test_ledger_cursor_is_kept_per_thread(database):
    with ledger_cursor() as cursor:
        conn = cursor.connection
        pid = conn.info.backend_pid
        assert conn.autocommit is True
        assert show(cursor, "synchronous_commit") == "off"
        assert show(cursor, "application_name") == db.LEDGER_APPLICATION_NAME
        assert show(cursor, "statement_timeout") == "30s"
    with ledger_cursor() as again:
        assert again is cursor
        assert again.connection.info.backend_pid == pid

    other_pids = []

    def use_in_thread() -> None:
        with ledger_cursor() as cursor:
            other_pids.append(cursor.connection.info.backend_pid)
        close_ledger_connection()

    thread = threading.Thread(target=use_in_thread)
    thread.start()
    thread.join()
    assert other_pids
    assert other_pids[0] != pid
    wait_for(lambda: not backend_alive(other_pids[0]))

    # Everything else still waits for its commit to reach the disk.
    with driver_autocommit() as pooled:
        assert show(pooled, "synchronous_commit") == "on"
    close_ledger_connection()
    wait_for(lambda: not backend_alive(pid))


def test_killed_ledger_connection_is_replaced(database):
    with ledger_cursor() as cursor:
        pid = cursor.connection.info.backend_pid
    with admin_connection() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_for(lambda: not backend_alive(pid))

    with pytest.raises(psycopg.OperationalError), ledger_cursor() as cursor:
        cursor.execute("SELECT 1")

    with ledger_cursor() as cursor:
        rows, _ = run_sql(cursor, "SELECT pg_backend_pid() AS pid", {})
    assert rows[0].pid != pid
    close_ledger_connection()


def test_reset_engine_replaces_ledger_connection(database):
    with ledger_cursor() as cursor:
        pid = cursor.connection.info.backend_pid
    db.reset_engine()
    with ledger_cursor() as cursor:
        assert cursor.connection.info.backend_pid != pid
    wait_for(lambda: not backend_alive(pid))
    close_ledger_connection()


def test_worker_threads_close_ledger_connections(broker):
    def ledger_backends() -> set[int]:
        with admin_connection() as admin:
            cursor = admin.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                [db.LEDGER_APPLICATION_NAME],
            )
            return {row[0] for row in cursor}

    before = ledger_backends()
    enqueue("billing_run", {"period": "2026-10"})
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_for(all_jobs_finished)
        opened = ledger_backends() - before
    finally:
        worker.stop()

    assert opened
    wait_for(lambda: not ledger_backends() & opened)


def backend_pid(target: psycopg.Connection | psycopg.Cursor) -> int:
    return target.execute("SELECT pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("lend", [ledger_cursor, driver_autocommit])
def test_statement_reruns_after_disconnect(without_pre_ping, lend):
    with lend() as target:
        pid = backend_pid(target)
    with admin_connection() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_for(lambda: not backend_alive(pid))

    new_pid = retry_once_if_disconnected(lend, backend_pid)

    assert new_pid != pid
    close_ledger_connection()


def test_live_connection_error_is_raised(database):
    calls = []

    def time_out(cursor: psycopg.Cursor) -> None:
        calls.append(cursor.connection.info.backend_pid)
        cursor.execute("SET statement_timeout = 50")
        try:
            cursor.execute("SELECT pg_sleep(1)")
        finally:
            cursor.execute("RESET statement_timeout")

    with pytest.raises(psycopg.errors.QueryCanceled):
        retry_once_if_disconnected(ledger_cursor, time_out)

    assert len(calls) == 1
    close_ledger_connection()
