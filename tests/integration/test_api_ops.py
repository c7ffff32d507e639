"""Operator views, probes, and the OpenAPI document."""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import update

from actors.ledger import enqueue
from actors.registry import QUEUES
from infra.db import transaction
from models.jobs import Job, JobStatus
from scheduler.schedules import SCHEDULES
from tests.conftest import closed_port, reconfigure
from web import VetqueueOpenAPI

QUEUE_FIELDS = {
    "queue",
    "ready",
    "in_flight",
    "delayed",
    "dead_letters",
    "oldest_ready_age_s",
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_queues_counts_ready_messages(client, operator):
    enqueue("billing_run", {"period": "2025-05"})
    second = enqueue("billing_run", {"period": "2025-06"}).job
    with transaction() as session:
        session.execute(
            update(Job).where(Job.id == second.id).values(status=JobStatus.FAILED)
        )

    response = client.get("/v1/ops/queues", headers=operator.headers)

    assert response.status_code == 200
    queues = {entry["queue"]: entry for entry in response.json["queues"]}
    assert set(queues) == set(QUEUES)
    for entry in queues.values():
        assert set(entry) == QUEUE_FIELDS
    assert queues["billing"]["ready"] == 2
    assert queues["billing"]["oldest_ready_age_s"] >= 0
    assert queues["charges"]["ready"] == 0
    assert response.json["jobs"] == {
        "enqueued": 1,
        "running": 0,
        "retrying": 0,
        "succeeded": 0,
        "failed": 1,
    }


def test_schedules_lists_every_schedule(client, operator):
    response = client.get("/v1/ops/schedules", headers=operator.headers)

    assert response.status_code == 200
    entries = response.json["schedules"]
    assert [entry["name"] for entry in entries] == [s.name for s in SCHEDULES]
    assert len(entries) == 4
    for entry in entries:
        latest = dt.datetime.fromisoformat(entry["latest_slot"])
        upcoming = dt.datetime.fromisoformat(entry["next_slot"])
        assert latest <= dt.datetime.now(dt.UTC) < upcoming
        assert entry["latest_job"] is None


def test_schedules_shows_latest_slot_job(client, operator):
    schedule = next(s for s in SCHEDULES if s.name == "prune-jobs")
    slot = schedule.latest_slot(dt.datetime.now(dt.UTC))
    job = enqueue(
        schedule.job_type, schedule.params(slot), dedup_key=schedule.dedup_key(slot)
    ).job

    response = client.get("/v1/ops/schedules", headers=operator.headers)

    entry = next(e for e in response.json["schedules"] if e["name"] == "prune-jobs")
    assert entry["job_type"] == "prune_jobs"
    assert entry["cron"] == "30 3 * * *"
    assert entry["time_zone"] == "UTC"
    assert entry["latest_job"] == {"id": str(job.id), "status": "enqueued"}


def test_healthz_is_ok(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_when_servers_answer(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_failed_redis(app, client):
    app.extensions["vetqueue"]["redis"] = redis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json["error"]["code"] == "not_ready"
    assert "redis" in response.json["error"]["message"]
    assert "database" not in response.json["error"]["message"]
    assert response.json["error"]["details"]["checks"]["database"] == "ok"


@pytest.fixture
def database_down(operator):
    """Point the app's engine at a closed port until the test ends."""
    original = os.environ["DATABASE_URL"]
    port = closed_port()
    reconfigure(
        DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{port}/hidden_db"
    )
    yield port
    reconfigure(DATABASE_URL=original)


def test_readyz_hides_database_address(client, database_down):
    response = client.get("/readyz")

    assert response.status_code == 503
    checks = response.json["error"]["details"]["checks"]
    assert checks["database"] == "failed: OperationalError"
    assert str(database_down) not in response.get_data(as_text=True)
    assert "hidden_db" not in response.get_data(as_text=True)


def test_database_outage_returns_503(client, operator, database_down):
    response = client.get("/v1/jobs", headers=operator.headers)

    assert response.status_code == 503
    assert response.json["error"]["code"] == "service_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert "hidden_db" not in response.get_data(as_text=True)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs_in(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs_in(value)]
    return []


def test_openapi_document_is_valid(client):
    response = client.get("/v1/openapi.json")

    document = response.json
    assert response.status_code == 200
    assert re.match(r"^3\.\d+\.\d+$", document["openapi"])
    assert document["info"]["title"]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made with 'flask --app web keys create'.",
    }
    error_schema = document["components"]["schemas"]["ErrorResponse"]
    assert error_schema["required"] == ["error"]
    for ref in refs_in(document):
        assert resolve(document, ref) is not None
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert method in HTTP_METHODS
            assert operation["responses"], f"{method} {path}"
            operation_ids.append(operation["operationId"])
            declared = {
                p["name"] for p in operation.get("parameters", []) if p["in"] == "path"
            }
            assert declared == set(re.findall(r"{(\w+)}", path)), f"{method} {path}"
    assert len(operation_ids) == len(set(operation_ids))


def test_openapi_lists_every_route(app: VetqueueOpenAPI, client):
    document = client.get("/v1/openapi.json").json

    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method) for path, item in document["paths"].items() for method in item
    }

    assert served == documented


def test_openapi_documents_security_and_errors(client):
    document = client.get("/v1/openapi.json").json

    for path, item in document["paths"].items():
        for method, operation in item.items():
            public = not path.startswith("/v1/") or path == "/v1/openapi.json"
            if public:
                assert "security" not in operation, f"{method} {path}"
                continue
            assert operation["security"] == [{"bearerAuth": []}], f"{method} {path}"
            # Every operation reads the database, which may be unreachable.
            for status in ("401", "503"):
                content = operation["responses"][status]["content"]
                assert content["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }, f"{status} of {method} {path}"


def test_openapi_documents_job_params(client):
    document = client.get("/v1/openapi.json").json

    schemas = document["components"]["schemas"]
    params = schemas["JobCreate"]["properties"]["params"]
    assert {"$ref": "#/components/schemas/BillingRunParams"} in params["oneOf"]
    assert "period" in schemas["BillingRunParams"]["properties"]
