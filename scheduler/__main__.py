"""Run the scheduler: ``python -m scheduler``. Stops cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
import threading

from actors.broker import setup_broker
from actors.ledger import enqueue
from infra.logging import configure_logging
from infra.settings import SettingsError, get_settings
from scheduler.schedules import SCHEDULES, Schedule, slot_label

logger = logging.getLogger("scheduler")

TICK_S = 5.0


def enqueue_due(
    schedules: tuple[Schedule, ...],
    *,
    now: dt.datetime,
    last_enqueued: dict[str, dt.datetime],
) -> list[str]:
    """Enqueue the latest due slot of each schedule not yet enqueued by this process.

    Only the latest slot is considered, so after downtime each schedule runs
    once, not once per missed slot. The dedup key makes the enqueue safe when
    several scheduler replicas race for the same slot.
    """
    enqueued = []
    for schedule in schedules:
        slot = schedule.latest_slot(now)
        if last_enqueued.get(schedule.name) == slot:
            continue
        try:
            result = enqueue(
                schedule.job_type,
                schedule.params(slot),
                dedup_key=schedule.dedup_key(slot),
            )
        except Exception:
            logger.exception(
                "enqueueing schedule %s slot %s failed; retrying next tick",
                schedule.name,
                slot_label(slot),
            )
            continue
        last_enqueued[schedule.name] = slot
        if result.created:
            enqueued.append(schedule.dedup_key(slot))
            logger.info(
                "enqueued schedule %s slot %s",
                schedule.name,
                slot_label(slot),
                extra={"job_id": str(result.job.id), "dedup_key": result.job.dedup_key},
            )
    return enqueued


def main() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    try:
        settings = get_settings()
    except SettingsError as error:
        sys.exit(f"scheduler not started: {error}")
    configure_logging(settings.log_level)
    setup_broker(settings)

    logger.info("scheduler started with %d schedules", len(SCHEDULES))
    last_enqueued: dict[str, dt.datetime] = {}
    while not stop.is_set():
        enqueue_due(SCHEDULES, now=dt.datetime.now(dt.UTC), last_enqueued=last_enqueued)
        stop.wait(TICK_S)
    logger.info("scheduler stopped")


if __name__ == "__main__":
    main()
