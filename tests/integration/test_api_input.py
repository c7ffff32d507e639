"""Input the database cannot store, or that would exhaust the parser."""

from __future__ import annotations

import pytest

from tests.factories import jobs_by_status


def post_json(client, caller, url: str, body: str):
    return client.post(
        url, data=body, content_type="application/json", headers=caller.headers
    )


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/v1/tenants", '{"name": "Clinic\\u0000", "plan_price_cents": 100}', "name"),
        (
            "/v1/jobs",
            '{"type": "charge_due_invoices", "params": {"slot": "a\\u0000"}}',
            "params.slot",
        ),
        (
            "/v1/jobs",
            '{"type": "billing_run", "params": {"\\u0000": 1}}',
            "params.\x00",
        ),
    ],
)
def test_nul_character_rejected(client, operator, url, body, field):
    response = post_json(client, operator, url, body)

    assert response.status_code == 422
    assert response.json["error"]["details"]["fields"][0]["field"] == field
    assert "U+0000" in response.json["error"]["message"]
    assert jobs_by_status() == {}


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (
            '"{\\"name\\": \\"String clinic\\", \\"plan_price_cents\\": 100}"',
            "a string",
        ),
        ("[]", "an array"),
        ("42", "a number"),
        ("true", "a boolean"),
        ("null", "null"),
    ],
)
@pytest.mark.parametrize("url", ["/v1/tenants", "/v1/jobs"])
def test_body_not_object_rejected(client, operator, url, body, kind):
    response = post_json(client, operator, url, body)

    assert response.status_code == 422
    [problem] = response.json["error"]["details"]["fields"]
    assert problem == {
        "field": "body",
        "message": f"expected a JSON object, got {kind}",
    }
    assert jobs_by_status() == {}
    tenants = client.get("/v1/tenants/1", headers=operator.headers)
    assert tenants.status_code == 404


def test_nul_in_query_rejected(client, operator):
    response = client.get("/v1/jobs?dedup_key=%00", headers=operator.headers)

    assert response.status_code == 422
    assert response.json["error"]["details"]["fields"][0]["field"] == "dedup_key"


def test_deep_nesting_rejected(client, operator):
    body = '{"type": "billing_run", "params": ' + "[" * 5000 + "]" * 5000 + "}"

    response = post_json(client, operator, "/v1/jobs", body)

    assert response.status_code == 400
    assert "nested too deeply" in response.json["error"]["message"]


def test_long_slot_rejected(client, operator):
    response = client.post(
        "/v1/jobs",
        json={"type": "charge_due_invoices", "params": {"slot": "x" * 7000}},
        headers=operator.headers,
    )

    assert response.status_code == 422
    assert response.json["error"]["details"]["fields"][0]["field"] == "params.slot"


@pytest.mark.parametrize(
    "params",
    [
        {"period": "2026-11\n"},
        {"period": "\uff12\uff10\uff12\uff16-11"},
        {"period": "0001-01"},
        {"period": "0000-01"},
        {"period": "2026-10", "after_tenant_id": 99999999999999999999999},
        {"period": "2026-10", "after_tenant_id": "5"},
    ],
    ids=["newline", "full-width", "ancient", "year-zero", "huge-id", "string-id"],
)
def test_billing_params_rejected(client, operator, params):
    response = client.post(
        "/v1/jobs",
        json={"type": "billing_run", "params": params},
        headers=operator.headers,
    )

    assert response.status_code == 422
    assert response.json["error"]["details"]["fields"][0]["field"].startswith("params.")
    assert jobs_by_status() == {}


def test_repeated_idempotency_key_rejected(client, operator):
    headers = [
        *operator.headers.items(),
        ("Idempotency-Key", "run-oct"),
        ("Idempotency-Key", "other"),
    ]

    response = client.post(
        "/v1/jobs",
        json={"type": "billing_run", "params": {"period": "2026-10"}},
        headers=headers,
    )

    assert response.status_code == 422
    [problem] = response.json["error"]["details"]["fields"]
    assert problem["field"] == "Idempotency-Key"
    assert "one Idempotency-Key header" in problem["message"]
    assert jobs_by_status() == {}


@pytest.mark.parametrize("value", ["1_0", "+5", "\u0665", " 5", "5.0"])
@pytest.mark.parametrize(
    "url", ["/v1/jobs?limit=", "/v1/ops/queues/billing/dead-letters/requeue?limit="]
)
def test_query_integer_needs_ascii_digits(client, operator, url, value):
    method = client.post if "requeue" in url else client.get

    response = method(url + value, headers=operator.headers)

    assert response.status_code == 422
    [problem] = response.json["error"]["details"]["fields"]
    assert problem["field"] == "limit"


def test_repeated_query_parameter_rejected(client, operator):
    response = client.get("/v1/jobs?limit=5&limit=6", headers=operator.headers)

    assert response.status_code == 422
    [problem] = response.json["error"]["details"]["fields"]
    assert problem == {
        "field": "limit",
        "message": "given more than once; send it once",
    }


def test_unknown_requeue_parameter_rejected(client, operator):
    response = client.post(
        "/v1/ops/queues/billing/dead-letters/requeue?bogus=1",
        headers=operator.headers,
    )

    assert response.status_code == 422
    assert response.json["error"]["details"]["fields"][0]["field"] == "bogus"


@pytest.mark.parametrize(
    "path", ["/v1/tenants/%D9%A1", "/v1/tenants/%EF%BC%91", "/v1/tenants/01"]
)
def test_path_id_needs_ascii_digits(client, operator, make_tenant, path):
    make_tenant()

    response = client.get(path, headers=operator.headers)

    assert response.status_code == 404
    assert "Clinic" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/v1//jobs", "/v1/tenants//1", "/healthz//"])
def test_doubled_slash_is_json_404(client, operator, path):
    response = client.post(path, headers=operator.headers, json={})

    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert "Location" not in response.headers
