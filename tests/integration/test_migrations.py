"""Alembic migrations produce exactly the models' schema and downgrade cleanly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from alembic import command
from models import Base
from tests.conftest import SERVER_URL, TEST_DATABASE, alembic_config

MIGRATIONS_DATABASE = f"{TEST_DATABASE}_migrations"


@pytest.fixture
def empty_database() -> Iterator[str]:
    admin = sa.create_engine(f"{SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            sa.text(f'DROP DATABASE IF EXISTS "{MIGRATIONS_DATABASE}" WITH (FORCE)')
        )
        connection.execute(sa.text(f'CREATE DATABASE "{MIGRATIONS_DATABASE}"'))
    yield f"{SERVER_URL}/{MIGRATIONS_DATABASE}"
    with admin.connect() as connection:
        connection.execute(
            sa.text(f'DROP DATABASE IF EXISTS "{MIGRATIONS_DATABASE}" WITH (FORCE)')
        )
    admin.dispose()


def schema_differences(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(
                MigrationContext.configure(connection), Base.metadata
            )
    finally:
        engine.dispose()


def user_objects(url: str) -> tuple[set[str], set[str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            enums = set(
                connection.scalars(
                    sa.text(
                        "SELECT typname FROM pg_type t JOIN pg_namespace n "
                        "ON n.oid = t.typnamespace "
                        "WHERE t.typtype = 'e' AND n.nspname = 'public'"
                    )
                )
            )
        return tables, enums
    finally:
        engine.dispose()


def test_upgrade_head_matches_models(empty_database):
    command.upgrade(alembic_config(empty_database), "head")

    assert schema_differences(empty_database) == []


def test_downgrade_base_removes_everything(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")

    command.downgrade(config, "base")
    tables, enums = user_objects(empty_database)

    assert tables == {"alembic_version"}
    assert enums == set()


def test_upgrade_after_downgrade(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    command.downgrade(config, "base")

    command.upgrade(config, "head")

    assert schema_differences(empty_database) == []
