"""Bearer API keys: who is calling, and which endpoints and tenants they may see.

Keys are looked up by hash on every request, with no cache, so a revoked key
is rejected from the next request on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import TypeVar

from flask import current_app, g, request

from infra.db import transaction
from models.api_keys import ApiKeyRole, find_active_key
from web.errors import ApiError, not_found

F = TypeVar("F", bound=Callable[..., object])

SECURITY_SCHEME = "bearerAuth"
# The token68 characters of HTTP authentication. The secrets that
# create_api_key makes use a subset of them.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")
MAX_TOKEN_CHARS = 512
CHALLENGE = 'Bearer realm="vetqueue"'


@dataclasses.dataclass(frozen=True)
class Principal:
    """The API key of the current request."""

    key_id: int
    role: ApiKeyRole
    tenant_id: int | None
    display_prefix: str

    @property
    def is_operator(self) -> bool:
        return self.role == ApiKeyRole.OPERATOR


def operator_only(view: F) -> F:
    """Mark a view as operator-only, so that tenant keys get 403.

    Apply it below the route decorator: flask-openapi3 wraps the view with
    ``functools.wraps``, which copies this mark onto the registered function,
    where ``authenticate_request`` reads it before the body is validated.
    """
    view.operator_only = True  # type: ignore[attr-defined]
    return view


def authenticate_request() -> None:
    """Resolve the bearer key of the request and check the endpoint's role.

    Installed as a ``before_request`` hook of every /v1 blueprint.
    """
    principal = _principal_from_header(request.headers.get("Authorization"))
    g.principal = principal
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "operator_only", False) and not principal.is_operator:
        raise ApiError(
            403,
            "forbidden",
            f"{request.method} {request.path} requires an operator key; "
            "this key belongs to a tenant",
        )


def current_principal() -> Principal:
    return g.principal


def require_tenant_access(tenant_id: int | None, *, resource: str) -> None:
    """Raise a 404 ApiError when a tenant key requests another tenant's resource.

    The 404 reads like a missing resource so that a tenant cannot probe which
    ids exist elsewhere.
    """
    principal = current_principal()
    if principal.is_operator or principal.tenant_id == tenant_id:
        return
    raise not_found(f"{resource} not found")


def _principal_from_header(header: str | None) -> Principal:
    if header is None:
        raise _unauthorized(
            "missing_api_key",
            "missing Authorization header; send 'Authorization: Bearer <API key>'",
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and len(token) > MAX_TOKEN_CHARS:
        raise _unauthorized(
            "invalid_api_key",
            f"API key has {len(token)} characters, more than any key has "
            f"({MAX_TOKEN_CHARS}); send the key that 'keys create' printed",
            error="invalid_token",
        )
    if scheme.lower() != "bearer" or not token or not TOKEN_PATTERN.match(token):
        raise _unauthorized(
            "invalid_authorization_header",
            "malformed Authorization header; expected 'Bearer <API key>'",
            error="invalid_request",
        )

    with transaction() as session:
        key = find_active_key(session, token)
        if key is None:
            raise _unauthorized(
                "invalid_api_key",
                "the API key is unknown or revoked; create a new key with "
                "'flask --app web keys create'",
                error="invalid_token",
            )
        return Principal(
            key_id=key.id,
            role=key.role,
            tenant_id=key.tenant_id,
            display_prefix=key.display_prefix,
        )


def _unauthorized(code: str, message: str, *, error: str | None = None) -> ApiError:
    # Once a token was sent, the bearer challenge also names what was wrong.
    challenge = f'{CHALLENGE}, error="{error}"' if error else CHALLENGE
    return ApiError(401, code, message, headers={"WWW-Authenticate": challenge})
