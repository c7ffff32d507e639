"""Operator views: queue depths, job counts and the schedules' last and next runs."""

from __future__ import annotations

import datetime as dt
import uuid

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from actors.queues import queue_stats, requeue_dead_letters
from actors.registry import QUEUES
from infra.db import transaction
from models.jobs import JobStatus, count_by_status, list_jobs
from scheduler.schedules import SCHEDULES
from web.auth import SECURITY_SCHEME, authenticate_request, operator_only
from web.errors import ErrorResponse, QueryInt, error_responses, not_found

api = APIBlueprint(
    "ops",
    __name__,
    url_prefix="/v1/ops",
    abp_tags=[Tag(name="ops", description="Operator views of queues and schedules")],
    abp_security=[{SECURITY_SCHEME: []}],
    abp_responses={401: ErrorResponse, **error_responses(403, 503)},
)
api.before_request(authenticate_request)


class QueueStats(BaseModel):
    queue: str
    ready: int = Field(description="Messages waiting for a worker.")
    in_flight: int = Field(description="Messages a worker has fetched.")
    delayed: int = Field(description="Messages waiting for their retry or defer time.")
    dead_letters: int
    oldest_ready_age_s: float | None = Field(
        description="Age in seconds of the oldest ready message; null when none."
    )


class QueuesOut(BaseModel):
    queues: list[QueueStats]
    jobs: dict[JobStatus, int] = Field(description="Ledger jobs per status.")


class ScheduleJob(BaseModel):
    id: uuid.UUID
    status: JobStatus


class ScheduleOut(BaseModel):
    name: str
    cron: str
    time_zone: str
    job_type: str
    latest_slot: dt.datetime = Field(description="The most recent due time.")
    next_slot: dt.datetime
    latest_job: ScheduleJob | None = Field(
        description="The ledger job of the latest slot; null until it is enqueued."
    )


class SchedulesOut(BaseModel):
    schedules: list[ScheduleOut]


class QueuePath(BaseModel):
    queue: str = Field(description="Queue name: billing, charges or maintenance.")


class RequeueQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: QueryInt = Field(100, ge=1, le=1000, description="Dead letters to handle.")


class RequeueOut(BaseModel):
    requeued: int = Field(description="Failed jobs reset to enqueued and sent again.")
    removed: int = Field(description="Dead letters whose job is no longer failed.")
    kept: int = Field(description="Dead letters with no ledger job to run.")


@api.get("/queues", operation_id="getQueueStats", responses={200: QueuesOut})
@operator_only
def get_queues() -> dict[str, object]:
    """Show queue depths and job counts

    Reads the broker's Redis keys for each queue and counts ledger jobs by
    status. Needs an operator key.
    """
    with transaction() as session:
        counts = count_by_status(session)
    return {"queues": queue_stats(), "jobs": counts}


@api.get("/schedules", operation_id="listSchedules", responses={200: SchedulesOut})
@operator_only
def get_schedules() -> dict[str, object]:
    """Show each schedule's latest and next slot

    latest_job is the ledger job that the scheduler enqueued for the latest
    slot, found by the slot's dedup key. Needs an operator key.
    """
    now = dt.datetime.now(dt.UTC)
    schedules = []
    with transaction() as session:
        for schedule in SCHEDULES:
            latest = schedule.latest_slot(now)
            jobs = list_jobs(session, dedup_key=schedule.dedup_key(latest), limit=1)
            latest_job = None
            if jobs:
                latest_job = {"id": str(jobs[0].id), "status": jobs[0].status.value}
            schedules.append(
                {
                    "name": schedule.name,
                    "cron": schedule.cron,
                    "time_zone": schedule.time_zone,
                    "job_type": schedule.job_type,
                    "latest_slot": latest.isoformat(),
                    "next_slot": schedule.next_slot(now).isoformat(),
                    "latest_job": latest_job,
                }
            )
    return {"schedules": schedules}


@api.post(
    "/queues/<queue>/dead-letters/requeue",
    operation_id="requeueDeadLetters",
    responses={200: RequeueOut, **error_responses(404, 422)},
)
@operator_only
def post_requeue_dead_letters(path: QueuePath, query: RequeueQuery) -> dict[str, int]:
    """Requeue a queue's dead letters

    Resets the failed job of each dead letter, oldest first, to enqueued and
    sends it again. Dead letters whose job is no longer failed are removed,
    and those with no ledger job are kept. Needs an operator key.
    """
    if path.queue not in QUEUES:
        raise not_found(
            f"queue {path.queue!r} not found; expected one of: {', '.join(QUEUES)}"
        )
    return requeue_dead_letters(path.queue, limit=query.limit)
