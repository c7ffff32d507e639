"""Alembic environment: migrates the database named by DATABASE_URL."""

from logging.config import fileConfig

from sqlalchemy import create_engine, pool

from alembic import context
from infra.settings import SettingsError, get_settings
from models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get(
    "configure_logging", True
):
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return url
    try:
        return get_settings().database_url
    except SettingsError as error:
        raise SystemExit(f"migration not started: {error}") from None


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _database_url()
    # A migration waiting behind a long lock would block every writer queued
    # behind it, so it fails fast and is rerun instead.
    engine = create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"options": "-c lock_timeout=5000 -c statement_timeout=300000"},
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
