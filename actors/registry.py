"""The registry of job types: each one's actor function, queue, limits and params."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from infra.settings import Settings

QUEUES = ("billing", "charges", "maintenance")


class JobParams(BaseModel):
    """Base of every job's params: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class JobType:
    """A job type and the Dramatiq options of its actor."""

    name: str
    fn: Callable[[Any], dict[str, Any] | None]
    queue: str
    params_model: type[JobParams]
    time_limit_ms: int | Callable[[Settings], int]
    max_retries: int
    min_backoff_ms: int | None
    max_backoff_ms: int
    natural_key: Callable[[Any], str] | None
    tenant_id_of: Callable[[Any], int | None]

    def time_limit(self, settings: Settings) -> int:
        """Return the actor's time limit in milliseconds under these settings."""
        if callable(self.time_limit_ms):
            return self.time_limit_ms(settings)
        return self.time_limit_ms

    def parse(self, params: Any) -> JobParams:
        """Validate params; raises pydantic.ValidationError."""
        return self.params_model.model_validate(params)


JOB_TYPES: dict[str, JobType] = {}


def job_type(
    *,
    queue: str,
    params: type[JobParams],
    time_limit_ms: int | Callable[[Settings], int],
    max_retries: int = 5,
    min_backoff_ms: int | None = None,
    max_backoff_ms: int = 15 * 60_000,
    natural_key: Callable[[Any], str] | None = None,
    tenant_id_of: Callable[[Any], int | None] = lambda _params: None,
) -> Callable[[Callable], Callable]:
    """Register a function as the actor of a job type named after the function.

    ``natural_key`` derives the dedup key when a caller gives none. Without
    ``min_backoff_ms`` the first retry waits RETRY_MIN_BACKOFF_S. The actor
    is declared on a broker only by ``actors.broker.setup_broker``.
    """
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; expected one of {QUEUES}")

    def register(fn: Callable) -> Callable:
        if fn.__name__ in JOB_TYPES:
            raise ValueError(f"job type {fn.__name__!r} is registered twice")
        JOB_TYPES[fn.__name__] = JobType(
            name=fn.__name__,
            fn=fn,
            queue=queue,
            params_model=params,
            time_limit_ms=time_limit_ms,
            max_retries=max_retries,
            min_backoff_ms=min_backoff_ms,
            max_backoff_ms=max_backoff_ms,
            natural_key=natural_key,
            tenant_id_of=tenant_id_of,
        )
        return fn

    return register


def load_job_modules() -> None:
    """Import every module that registers job types."""
    from actors import billing, charging, maintenance  # noqa: F401
