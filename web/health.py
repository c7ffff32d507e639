"""Liveness and readiness probes, outside /v1 and without authentication."""

from __future__ import annotations

import logging

import redis
import sqlalchemy as sa
from flask import current_app
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel

from infra.db import transaction
from web.errors import ApiError, error_responses

logger = logging.getLogger(__name__)

api = APIBlueprint(
    "health", __name__, abp_tags=[Tag(name="health", description="Probes")]
)


class LiveOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str]


@api.get("/healthz", operation_id="getLiveness", responses={200: LiveOut})
def healthz() -> dict[str, str]:
    """Report that the process serves requests

    Touches neither PostgreSQL nor Redis, so a database outage does not get
    web processes restarted.
    """
    return {"status": "ok"}


@api.get(
    "/readyz",
    operation_id="getReadiness",
    responses={200: ReadyOut, **error_responses(503)},
)
def readyz() -> dict[str, object]:
    """Report whether PostgreSQL and Redis respond

    Returns 503 naming each check that failed.
    """
    checks = {"database": _check_database(), "redis": _check_redis()}
    failed = sorted(name for name, outcome in checks.items() if outcome != "ok")
    if failed:
        summary = "; ".join(f"{name} {checks[name]}" for name in failed)
        raise ApiError(
            503, "not_ready", f"not ready: {summary}", details={"checks": checks}
        )
    return {"status": "ready", "checks": checks}


def _check_database() -> str:
    try:
        with transaction() as session:
            session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        # The error names the host, port and database, which this endpoint,
        # open to anyone who reaches it, does not show; the log does.
        logger.warning("readiness check of the database failed: %s", exc)
        return f"failed: {type(exc).__name__}"
    return "ok"


def _check_redis() -> str:
    client: redis.Redis = current_app.extensions["vetqueue"]["redis"]
    try:
        client.ping()
    except redis.RedisError as exc:
        logger.warning("readiness check of Redis failed: %s", exc)
        return f"failed: {type(exc).__name__}"
    return "ok"
