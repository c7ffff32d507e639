"""Settings read from the environment once, when a process starts."""

from __future__ import annotations

import functools
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(RuntimeError):
    """An environment variable has a value that vetqueue cannot use."""


class Settings(BaseSettings):
    """Process-wide configuration. Every field maps to an upper-case variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/vetqueue",
        description="SQLAlchemy URL of the PostgreSQL database (psycopg 3 driver).",
    )
    db_pool_size: int = Field(
        10, ge=1, le=200, description="Pooled connections per process (and overflow)."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL of the Dramatiq broker and the rate limiters.",
    )
    redis_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Limit on connecting to Redis and on waiting for each reply.",
    )
    dramatiq_namespace: str = Field(
        "dramatiq",
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Prefix of every Redis key the broker writes.",
    )

    stripe_api_key: str = Field("sk_test_vetqueue", min_length=1)
    stripe_api_base: str = Field(
        "http://127.0.0.1:8420",
        description="Base address of the Stripe API (a local emulator in development).",
    )
    stripe_proxy_url: str | None = Field(
        None,
        description="Proxy for Stripe requests. Proxy environment variables "
        "such as HTTPS_PROXY are not read.",
    )
    stripe_connect_timeout_s: float = Field(3.0, gt=0, le=60)
    stripe_read_timeout_s: float = Field(20.0, gt=0, le=120)
    stripe_max_concurrency: int = Field(
        8, ge=1, le=1000, description="Concurrent Stripe calls across all workers."
    )
    stripe_slot_wait_s: float = Field(
        30.0,
        ge=0,
        le=300,
        description="Maximum wait for a Stripe call slot before the job is deferred.",
    )
    charge_time_budget_s: float = Field(
        60.0,
        gt=0,
        le=600,
        description="Time one charge job spends retrying transient Stripe errors.",
    )
    dunning_retry_days: Annotated[tuple[int, ...], NoDecode] = Field(
        (3, 5, 7),
        description="Days after each declined attempt until the next one.",
    )

    retry_min_backoff_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Delay before a failed job's first retry; later ones double it.",
    )
    lease_grace_s: float = Field(
        30.0, gt=0, le=3600, description="Lease length beyond an actor's time limit."
    )
    max_worker_deaths: int = Field(
        3, ge=1, le=100, description="Expired leases after which a job is failed."
    )
    sweep_after_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Seconds past its due time before an unstarted job is re-sent.",
    )
    job_retention_days: int = Field(30, ge=1, le=3650)
    billing_page_size: int = Field(500, ge=1, le=10_000)

    max_request_bytes: int = Field(64 * 1024, ge=1024)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("expected postgresql+psycopg://user@host:port/database")
        return value.replace("postgresql://", "postgresql+psycopg://", 1)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db")
        return value

    @field_validator("stripe_api_base")
    @classmethod
    def _check_api_base(cls, value: str) -> str:
        _check_http_url(value, kind="address")
        return value.rstrip("/")

    @field_validator("stripe_proxy_url", mode="before")
    @classmethod
    def _check_proxy_url(cls, value: object) -> object:
        if value == "":
            return None
        if isinstance(value, str):
            _check_http_url(value, kind="proxy address")
        return value

    @field_validator("dunning_retry_days", mode="before")
    @classmethod
    def _parse_days(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = tuple(_ascii_int(part) for part in value.split(","))
            except ValueError:
                raise ValueError(
                    "expected comma-separated whole days, e.g. 3,5,7"
                ) from None
        if not value or any(not 1 <= int(day) <= 60 for day in value):
            raise ValueError("expected one or more whole days, each from 1 to 60")
        return value


def _ascii_int(text: str) -> int:
    # int() also reads "3_0", "+3" and non-ASCII digits, which in a list of
    # days are more likely typos than intent.
    if not text.strip().isascii() or not text.strip().isdigit():
        raise ValueError(text)
    return int(text)


def _check_http_url(value: str, *, kind: str) -> None:
    """Raise ValueError unless ``value`` is an http:// or https:// URL with a host.

    The messages never repeat the value, which may hold a password.
    """
    expected = f"expected an http:// or https:// {kind} with a host"
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(expected)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(
            f"{expected} and a port from 1 to 65535; percent-encode any @, # or / "
            "in a user name or password"
        )
    try:
        for part in (parts.username, parts.password):
            if part is not None:
                unquote(part, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(
            f"{expected}; percent-encode the user name and password as UTF-8"
        ) from None


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with keyword overrides on top.

    Raises SettingsError naming each invalid variable and the expected form.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = str(error["loc"][0]).upper() if error["loc"] else "?"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{variable}: {message}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """Return the settings of this process, read from the environment on first use."""
    return load_settings()
