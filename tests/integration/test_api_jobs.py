"""POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id} and retries, on real servers."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from actors.ledger import enqueue
from actors.maintenance import queued_messages
from infra.db import transaction
from infra.redis import get_redis
from models.api_keys import ApiKeyRole
from models.jobs import Job, JobStatus, NewJob, insert_jobs
from tests.integration.conftest import BILLING_MESSAGES_KEY, Caller
from web import VetqueueOpenAPI, create_app
from web import jobs as jobs_api

RACERS = 50
RACE_ROUNDS = 5


def job_count() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(Job))


def jobs_with_key(dedup_key: str) -> list[Job]:
    with transaction() as session:
        return list(session.scalars(select(Job).where(Job.dedup_key == dedup_key)))


def next_month() -> str:
    today = dt.datetime.now(dt.UTC).date()
    first_of_next = (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return first_of_next.strftime("%Y-%m")


def error_fields(response: TestResponse) -> list[str]:
    return [problem["field"] for problem in response.json["error"]["details"]["fields"]]


def post_job(
    client: FlaskClient,
    caller: Caller,
    body: object,
    *,
    key: str | None = None,
) -> TestResponse:
    headers = dict(caller.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/v1/jobs", json=body, headers=headers)


def race(
    app: VetqueueOpenAPI, caller: Caller, body: dict, key: str
) -> list[TestResponse]:
    """Send the same POST from RACERS threads released at once by a barrier."""
    barrier = threading.Barrier(RACERS)

    def send(_: int) -> TestResponse:
        client = app.test_client()
        headers = {**caller.headers, "Idempotency-Key": key}
        barrier.wait(timeout=30)
        return client.post("/v1/jobs", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        return list(pool.map(send, range(RACERS)))


def test_enqueue_race_creates_one_job(app, operator):
    body = {"type": "billing_run", "params": {"period": "2025-06"}}

    for round_number in range(RACE_ROUNDS):
        key = f"race-{round_number}-{uuid.uuid4()}"

        responses = race(app, operator, body, key)

        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 202}, statuses
        assert statuses.count(202) == 1
        assert len({response.json["id"] for response in responses}) == 1
        assert len(jobs_with_key(f"operator:{key}")) == 1
        assert job_count() == round_number + 1
        assert get_redis().hlen(BILLING_MESSAGES_KEY) == round_number + 1


def test_enqueue_replay_returns_existing_job(client, operator):
    body = {"type": "billing_run", "params": {"period": "2025-06"}}

    first = post_job(client, operator, body, key="replay-1")
    second = post_job(client, operator, body, key="replay-1")

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json["id"] == first.json["id"]
    assert first.json["status"] == "enqueued"
    assert first.json["dedup_key"] == "operator:replay-1"
    assert get_redis().hlen(BILLING_MESSAGES_KEY) == 1


def test_enqueue_without_key_uses_natural_key(client, operator):
    body = {"type": "billing_run", "params": {"period": "2025-06"}}

    first = post_job(client, operator, body)
    second = post_job(client, operator, body)

    assert first.status_code == 202
    assert second.status_code == 200
    assert first.json["dedup_key"] == "billing-run:2025-06"
    assert job_count() == 1


def test_enqueue_key_reuse_conflicts(client, operator):
    first = post_job(
        client,
        operator,
        {"type": "billing_run", "params": {"period": "2025-06"}},
        key="reused",
    )

    second = post_job(
        client,
        operator,
        {"type": "billing_run", "params": {"period": "2025-07"}},
        key="reused",
    )

    assert second.status_code == 409
    assert second.json["error"]["code"] == "dedup_key_conflict"
    assert second.json["error"]["details"]["job_id"] == first.json["id"]
    assert job_count() == 1


def test_enqueue_keys_scoped_per_tenant(
    client, monkeypatch, operator, tenant_a, tenant_b
):
    # No job type is open to tenant keys yet, so this opens billing_run to them
    # through the allow-list to exercise the per-tenant key scopes.
    monkeypatch.setitem(
        jobs_api.ENQUEUEABLE_JOB_TYPES,
        "billing_run",
        frozenset({ApiKeyRole.OPERATOR, ApiKeyRole.TENANT}),
    )
    body = {"type": "billing_run", "params": {"period": "2025-06"}}

    from_a = post_job(client, tenant_a, body, key="shared")
    from_b = post_job(client, tenant_b, body, key="shared")
    from_operator = post_job(client, operator, body, key="shared")

    assert from_a.status_code == 202
    assert from_b.status_code == 202
    assert from_operator.status_code == 202
    assert len({from_a.json["id"], from_b.json["id"], from_operator.json["id"]}) == 3
    assert from_a.json["tenant_id"] == tenant_a.tenant_id
    assert from_b.json["tenant_id"] == tenant_b.tenant_id
    assert from_a.json["dedup_key"] == f"tenant:{tenant_a.tenant_id}:shared"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"period": "2026-13"}, "params.period"),
        ({"period": "next month"}, "params.period"),
        ({"period": 202506}, "params.period"),
        ({"period": "2025-06", "colour": "red"}, "params.colour"),
        ({"after_tenant_id": -1}, "params.after_tenant_id"),
    ],
)
def test_enqueue_invalid_params_rejected(client, operator, params, field):
    response = post_job(client, operator, {"type": "billing_run", "params": params})

    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_failed"
    assert error_fields(response) == [field]
    assert job_count() == 0


def test_enqueue_future_period_rejected(client, operator):
    body = {"type": "billing_run", "params": {"period": next_month()}}

    response = post_job(client, operator, body)

    assert response.status_code == 422
    assert error_fields(response) == ["params.period"]
    assert "has not ended" in response.json["error"]["message"]
    assert job_count() == 0


@pytest.mark.parametrize("job_type", ["no_such_job", "bill_tenant", "sweep_jobs"])
def test_enqueue_unknown_type_rejected(client, operator, job_type):
    response = post_job(client, operator, {"type": job_type, "params": {}})

    assert response.status_code == 422
    assert error_fields(response) == ["type"]
    assert "billing_run" in response.json["error"]["message"]
    assert "charge_due_invoices" in response.json["error"]["message"]
    assert job_count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"params": {}}, "type"),
        ({"type": 5}, "type"),
        ({"type": "billing_run", "params": None}, "params"),
        ({"type": "billing_run", "params": [1]}, "params"),
        ({"type": "billing_run", "priority": 1}, "priority"),
        ([{"type": "billing_run"}], "body"),
    ],
)
def test_enqueue_malformed_body_rejected(client, operator, body, field):
    response = post_job(client, operator, body)

    assert response.status_code == 422
    assert error_fields(response) == [field]
    assert job_count() == 0


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\tkey"])
def test_enqueue_invalid_idempotency_key_rejected(client, operator, key):
    body = {"type": "billing_run", "params": {"period": "2025-06"}}

    response = post_job(client, operator, body, key=key)

    assert response.status_code == 422
    assert error_fields(response) == ["Idempotency-Key"]
    assert job_count() == 0


def test_enqueue_operator_type_forbidden_to_tenant(client, tenant_a):
    body = {"type": "billing_run", "params": {"period": "2025-06"}}

    response = post_job(client, tenant_a, body)

    assert response.status_code == 403
    assert response.json["error"]["code"] == "forbidden"
    assert job_count() == 0


def test_enqueue_malformed_json_rejected(client, operator):
    headers = {**operator.headers, "Content-Type": "application/json"}

    response = client.post("/v1/jobs", data='{"type": "billing_run",', headers=headers)

    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"
    assert job_count() == 0


@pytest.mark.parametrize("data", ["", '{"type": "billing_run", "params": NaN}'])
def test_enqueue_empty_or_nan_body_rejected(client, operator, data):
    headers = {**operator.headers, "Content-Type": "application/json"}

    response = client.post("/v1/jobs", data=data, headers=headers)

    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"


def test_enqueue_long_repeated_key_shortened(client, operator):
    headers = {**operator.headers, "Content-Type": "application/json"}
    key = "k" * 30_000
    data = f'{{"type": "billing_run", "{key}": 1, "{key}": 2}}'

    response = client.post("/v1/jobs", data=data, headers=headers)

    assert response.status_code == 400
    assert "appears more than once" in response.json["error"]["message"]
    assert len(response.json["error"]["message"]) < 400
    assert job_count() == 0


def test_enqueue_huge_integer_rejected(client, operator):
    headers = {**operator.headers, "Content-Type": "application/json"}
    data = '{"type": "billing_run", "params": {"period": ' + "9" * 5000 + "}}"

    response = client.post("/v1/jobs", data=data, headers=headers)

    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"
    assert "more than 4300 digits" in response.json["error"]["message"]
    assert "set_int_max_str_digits" not in response.json["error"]["message"]
    assert job_count() == 0


@pytest.mark.parametrize(
    "data",
    [
        '{"type": "billing_run", "type": "charge_due_invoices"}',
        '{"type": "billing_run", "params": {"period": "2025-06", "period": "2025-07"}}',
    ],
)
def test_enqueue_repeated_key_rejected(client, operator, data):
    headers = {**operator.headers, "Content-Type": "application/json"}

    response = client.post("/v1/jobs", data=data, headers=headers)

    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"
    assert "appears more than once" in response.json["error"]["message"]
    assert job_count() == 0


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
    ],
)
def test_enqueue_wrong_content_type_rejected(client, operator, content_type):
    headers = dict(operator.headers)
    if content_type:
        headers["Content-Type"] = content_type

    response = client.post("/v1/jobs", data='{"type": "billing_run"}', headers=headers)

    assert response.status_code == 415
    assert response.json["error"]["code"] == "unsupported_media_type"
    assert job_count() == 0


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_enqueue_compressed_body_rejected(client, operator, encoding):
    body = gzip.compress(b'{"type": "billing_run"}')
    headers = {
        **operator.headers,
        "Content-Type": "application/json",
        "Content-Encoding": encoding,
    }

    response = client.post("/v1/jobs", data=body, headers=headers)

    assert response.status_code == 415
    assert "Content-Encoding" in response.json["error"]["message"]
    assert repr(encoding) in response.json["error"]["message"]
    assert job_count() == 0


def test_enqueue_identity_encoding_accepted(client, operator):
    headers = {
        **operator.headers,
        "Content-Type": "application/json",
        "Content-Encoding": "identity",
    }
    body = '{"type": "billing_run", "params": {"period": "2025-06"}}'

    response = client.post("/v1/jobs", data=body, headers=headers)

    assert response.status_code == 202


def test_enqueue_utf8_charset_accepted(client, operator):
    headers = {**operator.headers, "Content-Type": "application/json; charset=UTF-8"}
    body = '{"type": "billing_run", "params": {"period": "2025-06"}}'

    response = client.post("/v1/jobs", data=body, headers=headers)

    assert response.status_code == 202
    assert job_count() == 1


def test_enqueue_oversized_body_rejected(client, operator):
    body = {"type": "billing_run", "params": {"period": "x" * 70_000}}

    response = post_job(client, operator, body)

    assert response.status_code == 413
    assert response.json["error"]["code"] == "request_too_large"
    assert response.json["error"]["details"]["max_bytes"] == 64 * 1024
    assert job_count() == 0


def test_enqueue_oversized_chunked_body_rejected(client, operator):
    body = b'{"type": "billing_run", "params": {"period": "' + b"x" * 70_000 + b'"}}'
    headers = {
        **operator.headers,
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
    }

    # A body without Content-Length is read from a stream that the server
    # ends; gunicorn and Werkzeug's server mark that with wsgi.input_terminated.
    response = client.post(
        "/v1/jobs",
        input_stream=io.BytesIO(body),
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},
    )

    assert response.status_code == 413
    assert response.json["error"]["code"] == "request_too_large"
    assert job_count() == 0


def test_unknown_route_is_json_404(client, operator):
    response = client.get("/v1/no-such-thing", headers=operator.headers)

    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert response.headers["X-Request-Id"]


def test_wrong_method_is_json_405(client, operator):
    response = client.delete("/v1/jobs", headers=operator.headers)

    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
    assert "POST" in response.json["error"]["details"]["allowed_methods"]
    assert "POST" in response.headers["Allow"]


def test_unhandled_error_is_json_500(broker, caplog):
    app = create_app({"TESTING": True})

    def fail() -> None:
        raise RuntimeError("simulated bug")

    app.add_url_rule("/fail", view_func=fail)
    caplog.set_level(logging.ERROR, logger="web.errors")

    response = app.test_client().get("/fail", headers={"X-Request-Id": "req-500"})

    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"
    assert "simulated bug" not in response.text
    assert response.headers["X-Request-Id"] == "req-500"
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "req-500"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None


def test_request_id_generated_when_absent(client):
    first = client.get("/healthz")
    second = client.get("/healthz")

    assert len(first.headers["X-Request-Id"]) == 32
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


def test_get_job_returns_ledger_row(client, operator):
    created = post_job(
        client, operator, {"type": "billing_run", "params": {"period": "2025-06"}}
    )

    response = client.get(f"/v1/jobs/{created.json['id']}", headers=operator.headers)

    assert response.status_code == 200
    assert response.json == created.json


@pytest.mark.parametrize("job_id", ["not-a-uuid", str(uuid.uuid4())])
def test_get_job_missing_is_404(client, operator, job_id):
    response = client.get(f"/v1/jobs/{job_id}", headers=operator.headers)

    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_get_job_of_own_tenant(client, tenant_a):
    job = enqueue(
        "bill_tenant", {"tenant_id": tenant_a.tenant_id, "period": "2025-06"}
    ).job

    response = client.get(f"/v1/jobs/{job.id}", headers=tenant_a.headers)

    assert response.status_code == 200
    assert response.json["tenant_id"] == tenant_a.tenant_id


def create_jobs(count: int) -> list[str]:
    """Enqueue billing runs in separate transactions; return ids, oldest first."""
    return [
        str(enqueue("billing_run", {"period": f"2024-{month:02d}"}).job.id)
        for month in range(1, count + 1)
    ]


def test_list_jobs_pages_without_gaps(client, operator):
    created = create_jobs(7)
    seen: list[str] = []
    cursor = None
    pages = 0

    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/jobs", query_string=query, headers=operator.headers)
        assert response.status_code == 200
        seen.extend(job["id"] for job in response.json["data"])
        pages += 1
        cursor = response.json["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert len(seen) == len(set(seen))
    assert seen == list(reversed(created))


def test_list_jobs_filters(client, operator, tenant_a):
    create_jobs(3)
    tenant_job = enqueue(
        "bill_tenant", {"tenant_id": tenant_a.tenant_id, "period": "2025-06"}
    ).job
    with transaction() as session:
        session.execute(
            update(Job).where(Job.id == tenant_job.id).values(status=JobStatus.FAILED)
        )

    def ids(**query: object) -> list[str]:
        response = client.get("/v1/jobs", query_string=query, headers=operator.headers)
        assert response.status_code == 200
        return [job["id"] for job in response.json["data"]]

    assert ids(status="failed") == [str(tenant_job.id)]
    assert ids(type="bill_tenant") == [str(tenant_job.id)]
    assert ids(tenant_id=tenant_a.tenant_id) == [str(tenant_job.id)]
    assert ids(dedup_key=tenant_job.dedup_key) == [str(tenant_job.id)]
    assert len(ids(type="billing_run")) == 3
    assert len(ids(status="enqueued")) == 3
    assert len(ids()) == 4


def test_list_jobs_tenant_sees_own_only(client, tenant_a, tenant_b):
    create_jobs(2)
    own = enqueue("bill_tenant", {"tenant_id": tenant_a.tenant_id, "period": "2025-06"})
    enqueue("bill_tenant", {"tenant_id": tenant_b.tenant_id, "period": "2025-06"})

    unfiltered = client.get("/v1/jobs", headers=tenant_a.headers)
    other = client.get(
        "/v1/jobs",
        query_string={"tenant_id": tenant_b.tenant_id},
        headers=tenant_a.headers,
    )

    assert [job["id"] for job in unfiltered.json["data"]] == [str(own.job.id)]
    assert other.status_code == 200
    assert other.json == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"tenant_id": "abc"}, "tenant_id"),
        ({"type": "no_such_job"}, "type"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "MjAyNHww"}, "cursor"),
        ({"sort": "oldest"}, "sort"),
    ],
)
def test_list_jobs_invalid_filter_rejected(client, operator, query, field):
    response = client.get("/v1/jobs", query_string=query, headers=operator.headers)

    assert response.status_code == 422
    assert error_fields(response) == [field]


def test_list_jobs_bad_status_names_allowed(client, operator):
    response = client.get(
        "/v1/jobs", query_string={"status": "done"}, headers=operator.headers
    )

    message = response.json["error"]["details"]["fields"][0]["message"]
    for status in JobStatus:
        assert status.value in message


def insert_failed_job() -> Job:
    """Insert a failed ledger row with no message in Redis, as after a dead letter."""
    new = NewJob(
        type="billing_run",
        params={"period": "2025-06", "after_tenant_id": 0},
        dedup_key="billing-run:2025-06",
        queue="billing",
    )
    with transaction() as session:
        [(job, _)] = insert_jobs(session, [new])
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(status=JobStatus.FAILED, last_error="simulated failure")
        )
    return job


def test_retry_failed_job_resends(client, operator):
    job = insert_failed_job()

    response = client.post(f"/v1/jobs/{job.id}/retry", headers=operator.headers)

    assert response.status_code == 202
    assert response.json["status"] == "enqueued"
    assert jobs_with_key(job.dedup_key)[0].status == JobStatus.ENQUEUED
    assert str(job.id) in queued_messages({"billing"}).waiting


def test_retry_unfailed_job_conflicts(client, operator):
    job = enqueue("billing_run", {"period": "2025-06"}).job

    response = client.post(f"/v1/jobs/{job.id}/retry", headers=operator.headers)

    assert response.status_code == 409
    assert response.json["error"]["code"] == "job_not_failed"
    assert response.json["error"]["details"]["status"] == "enqueued"


def test_retry_missing_job_is_404(client, operator):
    response = client.post(f"/v1/jobs/{uuid.uuid4()}/retry", headers=operator.headers)

    assert response.status_code == 404


def test_retry_ignores_body_content_type(client, operator):
    job = insert_failed_job()

    response = client.post(
        f"/v1/jobs/{job.id}/retry",
        data="",
        headers={**operator.headers, "Content-Type": "text/plain"},
    )

    assert response.status_code == 202
