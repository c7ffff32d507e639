"""Jobs: enqueue with an idempotency key, read, list and retry ledger jobs."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid
from typing import Any

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.errors import InvalidJobParams, UnknownJobType
from actors.ledger import enqueue, scoped_dedup_key, send_messages
from actors.registry import JOB_TYPES, load_job_modules
from infra.db import transaction
from models.api_keys import ApiKeyRole
from models.jobs import DedupKeyConflict, Job, JobStatus, list_jobs, reset_failed
from web.auth import (
    SECURITY_SCHEME,
    authenticate_request,
    current_principal,
    operator_only,
    require_tenant_access,
)
from web.errors import (
    ApiError,
    ErrorResponse,
    QueryInt,
    error_responses,
    not_found,
    require_json_body,
    validation_failed,
)

# The OpenAPI document and the type checks read the registry, which is
# complete only once every job module is imported.
load_job_modules()

OPERATOR_ONLY = frozenset({ApiKeyRole.OPERATOR})

# The job types that POST /v1/jobs accepts, with the key roles allowed to
# enqueue each. The other registered types (bill_tenant, charge_invoice,
# sweep_jobs, prune_jobs) are enqueued only by other jobs and the scheduler,
# and the API rejects them like unknown types.
ENQUEUEABLE_JOB_TYPES: dict[str, frozenset[ApiKeyRole]] = {
    "billing_run": OPERATOR_ONLY,
    "charge_due_invoices": OPERATOR_ONLY,
}

# No comma: a server joins repeated headers into one value with commas, so a
# key with a comma cannot be distinguished from two keys sent at once.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x20-\x2b\x2d-\x7e]{1,255}$")
CURSOR_SEPARATOR = "|"
# Ids above the range of PostgreSQL bigint cannot exist, so filters reject them.
MAX_BIGINT = 2**63 - 1

api = APIBlueprint(
    "jobs",
    __name__,
    url_prefix="/v1",
    abp_tags=[Tag(name="jobs", description="Jobs in the ledger")],
    abp_security=[{SECURITY_SCHEME: []}],
    abp_responses={401: ErrorResponse, **error_responses(503)},
)
api.before_request(authenticate_request)
api.before_request(require_json_body)


def document_job_params(spec: dict[str, Any]) -> None:
    """Describe ``params`` in the OpenAPI document as one of the types' models.

    Done on the finished document because pydantic cannot emit a ``$ref`` to
    a schema outside the model it is generating.
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    refs = []
    for name in ENQUEUEABLE_JOB_TYPES:
        model = JOB_TYPES[name].params_model
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        refs.append({"$ref": f"#/components/schemas/{model.__name__}"})
    schemas[JobCreate.__name__]["properties"]["params"]["oneOf"] = refs


class IdempotencyHeader(BaseModel):
    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        description="1 to 255 printable ASCII characters other than a comma. "
        "Send the header once. A repeated key returns "
        "the job it created; the same key with another type or params is a 409. "
        "Keys are scoped to the API key's tenant, or to operators. Without it, "
        "the job type derives the key from its params.",
        json_schema_extra={
            "minLength": 1,
            "maxLength": 255,
            "pattern": "^[ -+\\--~]+$",
        },
    )

    @field_validator("idempotency_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        if value is not None and not IDEMPOTENCY_KEY_PATTERN.match(value):
            raise ValueError(
                "expected 1 to 255 printable ASCII characters other than a comma, "
                "sent in one Idempotency-Key header"
            )
        return value


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Job type, e.g. billing_run.", max_length=64)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Params of the job type named in ``type``; unknown fields "
        "are rejected.",
    )


class JobPath(BaseModel):
    job_id: uuid.UUID


class JobQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    type: str | None = Field(None, max_length=64)
    tenant_id: QueryInt | None = Field(
        None,
        gt=0,
        le=MAX_BIGINT,
        description="Only jobs of this tenant. Tenant keys see only their own "
        "tenant's jobs: another tenant's id returns an empty page.",
    )
    dedup_key: str | None = Field(None, max_length=1000)
    limit: QueryInt = Field(50, ge=1, le=200)
    cursor: str | None = Field(
        None, description="The next_cursor of the previous page.", max_length=200
    )


class JobOut(BaseModel):
    """A job as the ledger records it."""

    id: uuid.UUID
    type: str
    params: dict[str, Any]
    dedup_key: str
    queue: str
    tenant_id: int | None
    status: JobStatus
    attempts: int
    last_error: str | None
    result: dict[str, Any] | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    next_attempt_at: dt.datetime | None = Field(
        description="When a pending job is due; null once it started."
    )


class JobPage(BaseModel):
    data: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null on the last page."
    )


@api.post(
    "/jobs",
    operation_id="createJob",
    responses={
        200: JobOut,
        202: JobOut,
        **error_responses(400, 403, 409, 413, 415, 422),
    },
)
def create_job(
    header: IdempotencyHeader, body: JobCreate
) -> tuple[dict[str, Any], int]:
    """Enqueue a job

    Returns 202 with the new job, or 200 with the job that the same
    Idempotency-Key (or derived key) created before with the same type and
    params. billing_run and charge_due_invoices need an operator key.
    """
    principal = current_principal()
    _check_enqueueable(body.type, principal.role)
    dedup_key = None
    if header.idempotency_key is not None:
        dedup_key = scoped_dedup_key(
            tenant_id=principal.tenant_id, key=header.idempotency_key
        )

    # The ledger row is inserted in this transaction and the message is sent
    # after it commits. Catching the conflict inside the block reads the
    # existing job before the rollback expires it.
    with transaction() as session:
        try:
            result = enqueue(
                body.type,
                body.params,
                dedup_key=dedup_key,
                tenant_id=principal.tenant_id,
                session=session,
            )
        except InvalidJobParams as exc:
            raise validation_failed(_params_problems(exc)) from None
        except UnknownJobType:
            raise validation_failed(_unknown_type_problems(body.type)) from None
        except DedupKeyConflict as exc:
            existing = exc.existing
            differs = "params" if existing.type == body.type else "type"
            raise ApiError(
                409,
                "dedup_key_conflict",
                f"dedup key {existing.dedup_key!r} already belongs to job "
                f"{existing.id} of type {existing.type} with different {differs}; "
                "send a new Idempotency-Key for a different job",
                details={"job_id": str(existing.id), "type": existing.type},
            ) from None

    return result.job.to_dict(), 202 if result.created else 200


def _check_enqueueable(type_name: str, role: ApiKeyRole) -> None:
    roles = ENQUEUEABLE_JOB_TYPES.get(type_name)
    if roles is None or type_name not in JOB_TYPES:
        raise validation_failed(_unknown_type_problems(type_name))
    if role not in roles:
        allowed = ", ".join(sorted(allowed_role.value for allowed_role in roles))
        raise ApiError(
            403,
            "forbidden",
            f"job type {type_name} cannot be enqueued with a {role.value} key; "
            f"use a key with one of the roles: {allowed}",
        )


def _unknown_type_problems(type_name: str) -> list[dict[str, str]]:
    known = ", ".join(sorted(ENQUEUEABLE_JOB_TYPES))
    if type_name in JOB_TYPES:
        message = (
            f"job type {type_name!r} is internal and cannot be enqueued through "
            f"the API; expected one of: {known}"
        )
    else:
        message = f"unknown job type {type_name!r}; expected one of: {known}"
    return [{"field": "type", "message": message}]


def _params_problems(exc: InvalidJobParams) -> list[dict[str, str]]:
    problems = []
    for problem in exc.problems:
        field = str(problem["field"])
        message = str(problem["message"]).removeprefix("Value error, ")
        if field == "dedup_key":
            # The ledger requires a key when the job type cannot derive one.
            problems.append({"field": "Idempotency-Key", "message": message})
        else:
            problems.append(
                {"field": f"params.{field}".rstrip("."), "message": message}
            )
    return problems


@api.get(
    "/jobs/<uuid:job_id>",
    operation_id="getJob",
    responses={200: JobOut, **error_responses(404)},
)
def get_job(path: JobPath) -> dict[str, Any]:
    """Read a job

    Tenant keys see only their own tenant's jobs; other jobs return 404.
    """
    with transaction() as session:
        job = session.get(Job, path.job_id)
        if job is None:
            raise not_found(f"job {path.job_id} not found")
        require_tenant_access(job.tenant_id, resource=f"job {path.job_id}")
        return job.to_dict()


@api.get(
    "/jobs",
    operation_id="listJobs",
    responses={200: JobPage, **error_responses(422)},
)
def list_jobs_view(query: JobQuery) -> dict[str, Any]:
    """List jobs, newest first

    Filters combine with AND. Tenant keys see only their own tenant's jobs, so
    a tenant_id filter naming another tenant returns an empty page. Pages
    follow next_cursor until it is null.
    """
    problems = []
    if query.type is not None and query.type not in JOB_TYPES:
        known = ", ".join(sorted(JOB_TYPES))
        problems.append(
            {
                "field": "type",
                "message": f"unknown job type {query.type!r}; expected one of: {known}",
            }
        )
    before = None
    if query.cursor is not None:
        try:
            before = _decode_job_cursor(query.cursor)
        except ValueError:
            problems.append(
                {
                    "field": "cursor",
                    "message": "invalid cursor; pass the next_cursor of the "
                    "previous page unchanged",
                }
            )
    if problems:
        raise validation_failed(problems)

    principal = current_principal()
    tenant_id = query.tenant_id
    if not principal.is_operator:
        if tenant_id is not None and tenant_id != principal.tenant_id:
            return {"data": [], "next_cursor": None}
        tenant_id = principal.tenant_id

    with transaction() as session:
        # Fetching one extra row shows whether another page exists.
        jobs = list_jobs(
            session,
            status=query.status,
            type=query.type,
            tenant_id=tenant_id,
            dedup_key=query.dedup_key,
            limit=query.limit + 1,
            before=before,
        )
    page = jobs[: query.limit]
    next_cursor = None
    if len(jobs) > query.limit:
        last = page[-1]
        next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
    return {"data": [job.to_dict() for job in page], "next_cursor": next_cursor}


@api.post(
    "/jobs/<uuid:job_id>/retry",
    operation_id="retryJob",
    responses={202: JobOut, **error_responses(403, 404, 409)},
)
@operator_only
def retry_job(path: JobPath) -> tuple[dict[str, Any], int]:
    """Retry a failed job

    Puts the job back to enqueued and sends its message again. Only a failed
    job can be retried; any other status returns 409. Needs an operator key.
    """
    with transaction() as session:
        job = reset_failed(session, job_id=path.job_id)
        if job is None:
            existing = session.get(Job, path.job_id)
            if existing is None:
                raise not_found(f"job {path.job_id} not found")
            raise ApiError(
                409,
                "job_not_failed",
                f"job {path.job_id} is {existing.status.value}; only a failed job "
                "can be retried",
                details={"job_id": str(path.job_id), "status": existing.status.value},
            )
    # A failed send is logged, and the sweeper re-sends the job once overdue.
    send_messages([job])
    return job.to_dict(), 202


def encode_cursor(*parts: str) -> str:
    """Pack values into an opaque, URL-safe pagination cursor."""
    raw = CURSOR_SEPARATOR.join(parts).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, parts: int) -> list[str]:
    """Unpack a cursor made by ``encode_cursor``. Raises ValueError if malformed."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
    except (binascii.Error, UnicodeError) as exc:
        raise ValueError(f"cursor is not valid base64: {exc}") from None
    values = raw.split(CURSOR_SEPARATOR)
    if len(values) != parts:
        raise ValueError(f"invalid cursor: {len(values)} values, expected {parts}")
    return values


def _decode_job_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    created_at_text, id_text = decode_cursor(cursor, parts=2)
    created_at = dt.datetime.fromisoformat(created_at_text)
    if created_at.tzinfo is None:
        raise ValueError("cursor timestamp has no time zone")
    return created_at, uuid.UUID(id_text)
