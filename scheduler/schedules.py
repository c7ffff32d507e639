"""The periodic jobs, their cron expressions and how a slot becomes params."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from actors.billing import previous_month


def slot_label(slot: dt.datetime) -> str:
    """Format a slot as a UTC timestamp to the minute, e.g. 2026-12-01T02:00Z."""
    return slot.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A job type run on a cron expression evaluated in a time zone."""

    name: str
    cron: str
    job_type: str
    params: Callable[[dt.datetime], dict[str, Any]]
    time_zone: str = "UTC"

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.cron):
            raise ValueError(
                f"schedule {self.name}: invalid cron expression {self.cron!r}"
            )

    def latest_slot(self, now: dt.datetime) -> dt.datetime:
        """Return the most recent due time at or before ``now``."""
        local_now = now.astimezone(ZoneInfo(self.time_zone))
        # croniter's get_prev excludes a slot equal to the start time, so start
        # a microsecond later to count the slot that is due right now.
        start = local_now + dt.timedelta(microseconds=1)
        return croniter(self.cron, start).get_prev(dt.datetime)

    def next_slot(self, now: dt.datetime) -> dt.datetime:
        local_now = now.astimezone(ZoneInfo(self.time_zone))
        return croniter(self.cron, local_now).get_next(dt.datetime)

    def dedup_key(self, slot: dt.datetime) -> str:
        return f"schedule:{self.name}:{slot_label(slot)}"


def _with_slot(slot: dt.datetime) -> dict[str, Any]:
    return {"slot": slot_label(slot)}


SCHEDULES = (
    Schedule(
        name="billing-run",
        cron="0 2 1 * *",
        job_type="billing_run",
        params=lambda slot: {"period": previous_month(slot.astimezone(dt.UTC).date())},
    ),
    Schedule(
        name="charge-due-invoices",
        cron="0 * * * *",
        job_type="charge_due_invoices",
        params=_with_slot,
    ),
    Schedule(
        name="sweep-jobs", cron="* * * * *", job_type="sweep_jobs", params=_with_slot
    ),
    Schedule(
        name="prune-jobs", cron="30 3 * * *", job_type="prune_jobs", params=_with_slot
    ),
)
