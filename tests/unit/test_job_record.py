"""JobRecord mirrors the jobs table, so that a row converts without loss."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from models.jobs import Job, JobRecord, JobStatus


def test_fields_are_the_table_columns():
    fields = {field.name for field in dataclasses.fields(JobRecord)}
    assert fields == {column.name for column in Job.__table__.c}


def test_to_dict_matches_the_orm_object():
    now = dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC)
    values = {
        "id": uuid.uuid4(),
        "type": "billing_run",
        "params": {"period": "2026-10"},
        "dedup_key": "billing-run:2026-10",
        "queue": "billing",
        "tenant_id": None,
        "status": JobStatus.RETRYING,
        "attempts": 2,
        "deaths": 0,
        "lease_expires_at": None,
        "next_attempt_at": now,
        "last_error": "TimeoutError: slow",
        "result": None,
        "created_at": now,
        "started_at": now,
        "finished_at": None,
        "updated_at": now,
    }

    record = JobRecord(**values).to_dict()

    assert record == Job(**values).to_dict()
    assert record["status"] == "retrying"
    assert record["next_attempt_at"] == now.isoformat()
