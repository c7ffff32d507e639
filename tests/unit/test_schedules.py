import datetime as dt

import pytest

from scheduler.schedules import SCHEDULES, Schedule, slot_label

UTC = dt.UTC


def by_name(name: str) -> Schedule:
    return next(schedule for schedule in SCHEDULES if schedule.name == name)


def test_billing_slot_is_first_of_month():
    now = dt.datetime(2026, 12, 17, 9, 30, tzinfo=UTC)

    slot = by_name("billing-run").latest_slot(now)

    assert slot_label(slot) == "2026-12-01T02:00Z"
    assert by_name("billing-run").params(slot) == {"period": "2026-11"}


def test_slot_due_exactly_now_counts():
    now = dt.datetime(2026, 12, 1, 2, 0, tzinfo=UTC)

    slot = by_name("billing-run").latest_slot(now)

    assert slot_label(slot) == "2026-12-01T02:00Z"


def test_after_downtime_only_latest_slot():
    schedule = by_name("charge-due-invoices")
    down_since = dt.datetime(2026, 12, 3, 22, 10, tzinfo=UTC)
    back_at = down_since + dt.timedelta(hours=5)

    slot = schedule.latest_slot(back_at)

    assert slot_label(slot) == "2026-12-04T03:00Z"
    assert schedule.dedup_key(slot) == "schedule:charge-due-invoices:2026-12-04T03:00Z"


def test_next_slot_after_latest():
    schedule = by_name("prune-jobs")
    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    assert slot_label(schedule.latest_slot(now)) == "2026-12-04T03:30Z"
    assert slot_label(schedule.next_slot(now)) == "2026-12-05T03:30Z"


def test_time_zone_slot_in_utc_label():
    schedule = Schedule(
        name="morning",
        cron="0 8 * * *",
        job_type="sweep_jobs",
        params=lambda slot: {},
        time_zone="Europe/Berlin",
    )
    summer = dt.datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    winter = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    assert slot_label(schedule.latest_slot(summer)) == "2026-07-01T06:00Z"
    assert slot_label(schedule.latest_slot(winter)) == "2026-12-01T07:00Z"


def test_invalid_cron_rejected():
    with pytest.raises(ValueError, match="invalid cron"):
        Schedule(name="bad", cron="61 * * * *", job_type="x", params=lambda s: {})
