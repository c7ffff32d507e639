"""Fixtures of the HTTP API tests: the app, its test client, tenants and API keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from flask.testing import FlaskClient

from infra.db import transaction
from models.api_keys import ApiKeyRole, create_api_key
from models.tenants import Tenant
from tests.factories import SIGNED_UP_AT
from web import VetqueueOpenAPI, create_app

BILLING_MESSAGES_KEY = "vetqueue-test:billing.msgs"


@dataclasses.dataclass(frozen=True)
class Caller:
    """A tenant (or None for an operator) and the headers that authenticate it."""

    tenant_id: int | None
    headers: dict[str, str]
    secret: str


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def app(broker: dramatiq.Broker) -> VetqueueOpenAPI:
    return create_app({"TESTING": True})


@pytest.fixture
def client(app: VetqueueOpenAPI) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_tenant(broker: dramatiq.Broker) -> Callable[..., int]:
    """Insert a tenant with sensible defaults and return its id."""

    def make(**fields: Any) -> int:
        values: dict[str, Any] = {
            "name": "Clinic",
            "plan_price_cents": 4900,
            "currency": "eur",
            "stripe_customer_id": "cus_test",
            "stripe_payment_method_id": "pm_card_visa",
            "created_at": SIGNED_UP_AT,
            **fields,
        }
        with transaction() as session:
            tenant = Tenant(**values)
            session.add(tenant)
            session.flush()
            return tenant.id

    return make


@pytest.fixture
def make_caller(broker: dramatiq.Broker) -> Callable[..., Caller]:
    """Create an API key and return it as a Caller."""

    def make(role: ApiKeyRole, tenant_id: int | None = None) -> Caller:
        with transaction() as session:
            _, secret = create_api_key(
                session, name=f"{role.value} test key", role=role, tenant_id=tenant_id
            )
        return Caller(tenant_id=tenant_id, headers=bearer(secret), secret=secret)

    return make


@pytest.fixture
def operator(make_caller: Callable[..., Caller]) -> Caller:
    return make_caller(ApiKeyRole.OPERATOR)


@pytest.fixture
def tenant_a(
    make_tenant: Callable[..., int], make_caller: Callable[..., Caller]
) -> Caller:
    return make_caller(ApiKeyRole.TENANT, make_tenant(name="Clinic Alpha"))


@pytest.fixture
def tenant_b(
    make_tenant: Callable[..., int], make_caller: Callable[..., Caller]
) -> Caller:
    return make_caller(ApiKeyRole.TENANT, make_tenant(name="Clinic Bravo"))
