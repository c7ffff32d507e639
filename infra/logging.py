"""Logging set-up with job fields bound once per message and added to every line."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "vetqueue_log_fields", default=None
)

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"

# Fields shown after the message, from the bound context or a call's ``extra``.
FIELDS = (
    "job_id",
    "dedup_key",
    "actor",
    "tenant_id",
    "attempt",
    "message_id",
    "invoice_id",
    "request_id",
)


class ContextFilter(logging.Filter):
    """Adds the bound fields to each record, and all of them as ``record.context``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_fields.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        record.context = "".join(
            f" {key}={getattr(record, key)}"
            for key in FIELDS
            if getattr(record, key, None) is not None
        )
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send logs to stderr with bound fields appended. Safe to call twice."""
    root = logging.getLogger()
    root.setLevel(level)
    # The Stripe SDK logs two INFO lines per request, which would double the
    # log volume of a billing run. The charging code logs each outcome itself.
    stripe_level = max(logging.getLevelName(level), logging.WARNING)
    logging.getLogger("stripe").setLevel(stripe_level)
    if any(isinstance(f, ContextFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to every log line of this thread until ``unbind`` is called."""
    return _fields.set({**(_fields.get() or {}), **fields})


def unbind(token: contextvars.Token) -> None:
    _fields.reset(token)
