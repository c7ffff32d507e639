"""Bearer keys on every /v1 endpoint: 401, 403, tenant isolation, and the keys CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from actors.ledger import enqueue
from infra.db import transaction
from models.api_keys import ApiKey, ApiKeyRole
from models.billing import PlatformInvoice
from models.jobs import Job
from models.tenants import Tenant
from tests.integration.conftest import Caller, bearer
from web import VetqueueOpenAPI

# Every /v1 endpoint with a request body that would succeed for an operator.
ENDPOINTS = [
    ("POST", "/v1/jobs", {"type": "billing_run", "params": {"period": "2025-06"}}),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/{job_id}", None),
    ("POST", "/v1/jobs/{job_id}/retry", None),
    ("POST", "/v1/tenants", {"name": "Clinic Hotel", "plan_price_cents": 100}),
    ("GET", "/v1/tenants/{tenant_id}", None),
    ("PATCH", "/v1/tenants/{tenant_id}", {"name": "Clinic Renamed"}),
    ("GET", "/v1/tenants/{tenant_id}/platform-invoices", None),
    ("GET", "/v1/ops/queues", None),
    ("GET", "/v1/ops/schedules", None),
    ("POST", "/v1/ops/queues/{queue}/dead-letters/requeue", None),
]
OPERATOR_ONLY = [
    ("POST", "/v1/jobs/{job_id}/retry"),
    ("POST", "/v1/tenants"),
    ("PATCH", "/v1/tenants/{tenant_id}"),
    ("GET", "/v1/ops/queues"),
    ("GET", "/v1/ops/schedules"),
    ("POST", "/v1/ops/queues/{queue}/dead-letters/requeue"),
]
TENANT_RESOURCES = [
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/tenants/{tenant_id}"),
    ("GET", "/v1/tenants/{tenant_id}/platform-invoices"),
]
BODIES = {(method, path): body for method, path, body in ENDPOINTS}
BAD_HEADERS = [
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer ",
    "Bearer two tokens",
    "vq_no_scheme",
]


@dataclasses.dataclass(frozen=True)
class Resources:
    """Tenant B's tenant row, job and invoice, which tenant A must never see."""

    tenant_id: int
    job_id: str
    dedup_key: str
    invoice_id: int


@pytest.fixture
def resources_of_b(tenant_b: Caller) -> Resources:
    job = enqueue("bill_tenant", {"tenant_id": tenant_b.tenant_id, "period": "2025-06"})
    with transaction() as session:
        invoice = PlatformInvoice(
            tenant_id=tenant_b.tenant_id,
            period_start=dt.date(2025, 6, 1),
            amount_cents=4900,
            amount_due_cents=4900,
            currency="eur",
        )
        session.add(invoice)
        session.flush()
        invoice_id = invoice.id
    return Resources(
        tenant_id=tenant_b.tenant_id,
        job_id=str(job.job.id),
        dedup_key=job.job.dedup_key,
        invoice_id=invoice_id,
    )


def call(
    client: FlaskClient,
    method: str,
    path: str,
    resources: Resources,
    headers: dict[str, str],
) -> TestResponse:
    url = path.format(
        tenant_id=resources.tenant_id, job_id=resources.job_id, queue="charges"
    )
    return client.open(url, method=method, json=BODIES[(method, path)], headers=headers)


def snapshot() -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    """Return every job's key and status and every tenant's id and name."""
    with transaction() as session:
        jobs = session.execute(select(Job.dedup_key, Job.status).order_by(Job.id))
        tenants = session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.id))
        return (
            [(key, status.value) for key, status in jobs],
            [(tenant_id, name) for tenant_id, name in tenants],
        )


def assert_unauthorized(response: TestResponse) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json["error"]) == {"code", "message", "details"}


def test_endpoint_table_covers_every_route(app: VetqueueOpenAPI):
    served = {
        (method, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/") and rule.rule != "/v1/openapi.json"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }

    assert served == {(method, path) for method, path, _ in ENDPOINTS}


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ENDPOINTS])
def test_missing_key_is_401(client, resources_of_b, method, path):
    before = snapshot()

    response = call(client, method, path, resources_of_b, {})

    assert_unauthorized(response)
    assert response.json["error"]["code"] == "missing_api_key"
    assert snapshot() == before


@pytest.mark.parametrize("header", BAD_HEADERS)
@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ENDPOINTS])
def test_malformed_header_is_401(client, resources_of_b, method, path, header):
    response = call(client, method, path, resources_of_b, {"Authorization": header})

    assert_unauthorized(response)
    assert response.json["error"]["code"] == "invalid_authorization_header"


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ENDPOINTS])
def test_unknown_key_is_401(client, resources_of_b, method, path):
    headers = bearer("vq_" + "x" * 43)

    response = call(client, method, path, resources_of_b, headers)

    assert_unauthorized(response)
    assert response.json["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ENDPOINTS])
def test_overlong_key_is_401(client, resources_of_b, method, path):
    headers = bearer("a" * 8000)

    response = call(client, method, path, resources_of_b, headers)

    assert_unauthorized(response)
    assert response.json["error"]["code"] == "invalid_api_key"
    assert "8000 characters" in response.json["error"]["message"]


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ENDPOINTS])
def test_revoked_key_is_401(client, resources_of_b, operator, method, path):
    with transaction() as session:
        session.execute(update(ApiKey).values(revoked_at=func.now()))
    before = snapshot()

    response = call(client, method, path, resources_of_b, operator.headers)

    assert_unauthorized(response)
    assert response.json["error"]["code"] == "invalid_api_key"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert snapshot() == before


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ENDPOINTS])
def test_operator_key_reaches_endpoint(client, resources_of_b, operator, method, path):
    response = call(client, method, path, resources_of_b, operator.headers)

    # The retry returns 409 because tenant B's job has not failed, which shows
    # that the operator got past authentication and authorization.
    assert response.status_code in (200, 201, 202, 409)


@pytest.mark.parametrize(("method", "path"), OPERATOR_ONLY)
def test_tenant_key_on_operator_endpoint_is_403(
    client, resources_of_b, tenant_b, method, path
):
    before = snapshot()

    response = call(client, method, path, resources_of_b, tenant_b.headers)

    assert response.status_code == 403
    assert response.json["error"]["code"] == "forbidden"
    assert snapshot() == before


def test_tenant_key_on_operator_job_type_is_403(client, resources_of_b, tenant_b):
    response = call(client, "POST", "/v1/jobs", resources_of_b, tenant_b.headers)

    assert response.status_code == 403


@pytest.mark.parametrize(("method", "path"), TENANT_RESOURCES)
def test_other_tenant_resource_is_404(client, resources_of_b, tenant_a, method, path):
    response = call(client, method, path, resources_of_b, tenant_a.headers)

    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert "Clinic Bravo" not in response.text
    assert resources_of_b.dedup_key not in response.text
    assert "4900" not in response.text


@pytest.mark.parametrize(("method", "path"), TENANT_RESOURCES)
def test_own_tenant_resource_is_200(client, resources_of_b, tenant_b, method, path):
    response = call(client, method, path, resources_of_b, tenant_b.headers)

    assert response.status_code == 200


def test_other_tenant_job_list_is_empty(client, resources_of_b, tenant_a):
    response = client.get(
        "/v1/jobs",
        query_string={"tenant_id": resources_of_b.tenant_id},
        headers=tenant_a.headers,
    )

    assert response.status_code == 200
    assert response.json == {"data": [], "next_cursor": None}


def test_bearer_scheme_is_case_insensitive(client, operator):
    headers = {"Authorization": f"bearer {operator.secret}"}

    response = client.get("/v1/ops/queues", headers=headers)

    assert response.status_code == 200


def run_keys(app: VetqueueOpenAPI, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["keys", *args])
    return result.exit_code, result.output


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_cli_creates_operator_key(app, client):
    exit_code, output = run_keys(app, "create", "--role", "operator", "--name", "ops")

    response = client.get("/v1/ops/queues", headers=bearer(last_line(output)))

    assert exit_code == 0
    assert response.status_code == 200


def test_cli_creates_tenant_key(app, client, make_tenant):
    tenant_id = make_tenant(name="Clinic India")
    other_id = make_tenant(name="Clinic Juliett")
    exit_code, output = run_keys(
        app, "create", "--role", "tenant", "--tenant-id", str(tenant_id), "--name", "x"
    )
    headers = bearer(last_line(output))

    own = client.get(f"/v1/tenants/{tenant_id}", headers=headers)
    other = client.get(f"/v1/tenants/{other_id}", headers=headers)
    operator_only = client.get("/v1/ops/queues", headers=headers)

    assert exit_code == 0
    assert own.status_code == 200
    assert other.status_code == 404
    assert operator_only.status_code == 403


@pytest.mark.parametrize(
    ("args", "expected_code", "expected_text"),
    [
        (["--role", "tenant", "--tenant-id", "999"], 1, "tenant 999 not found"),
        (["--role", "tenant"], 2, "--tenant-id is required"),
        (["--role", "operator", "--tenant-id", "1"], 2, "only valid with"),
        (["--role", "admin"], 2, "--role"),
        (["--role", "tenant", "--tenant-id", "zero"], 2, "--tenant-id"),
        (["--role", "tenant", "--tenant-id", "\u0661"], 2, "is not a tenant id"),
        (["--role", "tenant", "--tenant-id", "0"], 2, "is not a tenant id"),
    ],
)
def test_cli_create_rejects_bad_options(app, args, expected_code, expected_text):
    exit_code, output = run_keys(app, "create", *args, "--name", "bad")

    assert exit_code == expected_code
    assert expected_text in output
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


@pytest.mark.parametrize("name", ["a\tb", "line\nbreak", "\u200b"])
def test_cli_create_rejects_control_characters(app, name):
    exit_code, output = run_keys(app, "create", "--role", "operator", "--name", name)

    assert exit_code == 2
    assert "control or format characters" in output
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_cli_revoke_takes_effect(app, client, operator: Caller):
    prefix = operator.secret[:10]

    exit_code, output = run_keys(app, "revoke", "--prefix", prefix)
    response = client.get("/v1/ops/queues", headers=operator.headers)

    assert exit_code == 0
    assert prefix in output
    assert_unauthorized(response)


def test_cli_revoke_unknown_prefix_fails(app):
    exit_code, output = run_keys(app, "revoke", "--prefix", "vq_nothing")

    assert exit_code == 1
    assert "no active API key" in output


def test_cli_revoke_short_prefix_explained(app, operator: Caller):
    exit_code, output = run_keys(app, "revoke", "--prefix", "vq_")

    assert exit_code == 1
    assert "10 characters" in output
    assert "got 3" in output


def test_cli_lists_keys(app, operator: Caller):
    exit_code, output = run_keys(app, "list")

    assert exit_code == 0
    assert operator.secret[:10] in output
    assert operator.secret not in output
    assert ApiKeyRole.OPERATOR.value in output
