"""Exceptions that decide what happens to a job after a failed attempt."""

from __future__ import annotations

from typing import Any

import pydantic


class PermanentJobError(Exception):
    """Retrying cannot help: the job is marked failed and its message dead-lettered."""


class MalformedMessage(PermanentJobError):
    """A message's params do not match its job type."""


class LedgerUnavailable(Exception):
    """The ledger could not claim a message, so it was not run and is retried."""


class Defer(Exception):  # noqa: N818 - a control-flow signal, like dramatiq.Retry
    """Run the job again after ``delay_s`` without using up one of its retries.

    Used while waiting for a shared resource, such as a Stripe call slot,
    because such a wait does not mean that the job itself is failing.
    """

    def __init__(self, delay_s: float, reason: str) -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.reason = reason


class UnknownJobType(ValueError):
    def __init__(self, job_type: str, known: list[str]) -> None:
        super().__init__(
            f"unknown job type {job_type!r}; expected one of: {', '.join(known)}"
        )
        self.job_type = job_type


class InvalidJobParams(ValueError):
    """Params that fail validation, with one entry per field and problem."""

    def __init__(self, job_type: str, problems: list[dict[str, Any]]) -> None:
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        super().__init__(f"invalid params for {job_type}: {summary}")
        self.job_type = job_type
        self.problems = problems

    @classmethod
    def from_validation_error(
        cls, job_type: str, error: pydantic.ValidationError, *, prefix: str = ""
    ) -> InvalidJobParams:
        problems = [
            {
                "field": ".".join([prefix, *map(str, item["loc"])]).strip("."),
                "message": item["msg"],
            }
            for item in error.errors()
        ]
        return cls(job_type, problems)
