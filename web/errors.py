"""The JSON error shape, request ids, JSON body checks and the error handlers.

Every error response, including Flask's own 404, 405 and 413, has the body
``{"error": {"code": ..., "message": ..., "details": {...}}}``.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import sys
import uuid
from typing import Annotated, Any

import psycopg
import pydantic
import redis
import sqlalchemy as sa
from flask import Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, BeforeValidator, Field
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# An incoming request id is kept, for correlation with a proxy's logs, only
# when it is short and plain. Any other value is replaced by a new id.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Error codes for statuses that Flask or Werkzeug raise on their own.
HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "service_unavailable",
}

# Errors of a server that is down or unreachable, or of a statement that ran
# past its timeout: the request may succeed when sent again.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    sa.exc.OperationalError,
    sa.exc.DisconnectionError,
    psycopg.OperationalError,
    redis.ConnectionError,
    redis.TimeoutError,
)
RETRY_AFTER_S = 5


class ErrorBody(BaseModel):
    code: str = Field(description="Stable snake_case code, e.g. validation_failed.")
    message: str = Field(description="What failed, on which value, and what to send.")
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra data. Validation errors list each problem in "
        "``fields``, as objects with ``field`` and ``message``.",
    )


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


class ApiError(Exception):
    """An error returned in the JSON error shape with the given status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_responses(*statuses: int) -> dict[int, type[BaseModel]]:
    """Map each status to the error shape, for an operation's ``responses``."""
    return dict.fromkeys(statuses, ErrorResponse)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def validation_failed(problems: list[dict[str, str]]) -> ApiError:
    """Build a 422 error listing each field and its problem in ``details.fields``."""
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return ApiError(
        422,
        "validation_failed",
        f"invalid request: {summary}",
        details={"fields": problems},
    )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = jsonify(
        {"error": {"code": code, "message": message, "details": details or {}}}
    )
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    # Kept for the one log record that after_request writes for a 5xx.
    g.error_message = message
    return response


def field_problems(error: pydantic.ValidationError) -> list[dict[str, str]]:
    """Turn pydantic's errors into ``{"field", "message"}`` entries.

    An error on the whole body (a JSON array instead of an object) has an
    empty location and is reported on the field ``body``.
    """
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"] and item["type"] in ("model_type", "dict_type"):
            message = "expected a JSON object"
        problems.append({"field": field, "message": message})
    return problems


def validation_error_response(error: pydantic.ValidationError) -> Response:
    """Build the 422 response for a body, query, path or header that fails its model.

    flask-openapi3 calls this for every model it validates before the view.
    """
    failure = validation_failed(field_problems(error))
    return error_response(
        failure.status, failure.code, failure.message, details=failure.details
    )


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, rejecting NaN, Infinity and repeated object keys.

    NaN and Infinity are not JSON, and PostgreSQL's jsonb rejects them too, so
    accepting them would turn a bad request into a database error. With a
    repeated key, parsers disagree on which value counts (Python's keeps the
    last), so the request is ambiguous.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_constant", _reject_constant)
        kwargs.setdefault("object_pairs_hook", _reject_repeated_keys)
        return json.loads(s, **kwargs)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a valid JSON number")


def _reject_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                key_text = key if len(key) <= 100 else key[:100] + "..."
                raise ValueError(
                    f"key {key_text!r} appears more than once in an object"
                )
            seen.add(key)
    return document


def assign_request_id() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex


def require_json_body() -> None:
    """Reject a POST or PATCH whose view takes a body unless it is valid JSON.

    Runs before flask-openapi3 validates the body model, which reads the body
    with ``get_json(silent=True)`` and would report bad JSON as a missing body.
    Views without a ``body`` parameter (such as a retry) ignore the body.
    """
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None or "body" not in inspect.signature(view).parameters:
        return
    if not request.is_json:
        sent = request.mimetype or "no Content-Type"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected a JSON body with Content-Type application/json, got {sent}",
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip()
    if encoding.lower() != "identity":
        # The body would be parsed as it arrived, compressed, and reported as
        # invalid JSON.
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Encoding {encoding[:40]!r} is not supported; send the JSON "
            "body uncompressed",
        )
    charset = request.mimetype_params.get("charset", "utf-8")
    if charset.lower() not in ("utf-8", "utf8"):
        # JSON exchanged between systems is UTF-8, and the body is decoded as
        # UTF-8 whatever charset the header declares.
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected a JSON body in UTF-8, got charset={charset}",
        )
    # Reading the body raises RequestEntityTooLarge (413) past MAX_CONTENT_LENGTH
    # when the request has a Content-Length.
    data = request.get_data(cache=True)
    _reject_cut_stream(len(data))
    if request.content_length is not None and len(data) < request.content_length:
        # The client stopped sending, and has most likely gone. Going on would
        # commit work whose response no client reads, so a retry would repeat it.
        raise ApiError(
            400,
            "incomplete_body",
            f"request body ended after {len(data)} of the "
            f"{request.content_length} bytes in Content-Length; send the whole body",
        )
    if not data.strip():
        problem = "the body is empty"
    else:
        try:
            document = current_app.json.loads(data)
        except ValueError as exc:
            problem = str(exc)
            if "sys.set_int_max_str_digits" in problem:
                # Python's message ends with advice for the server's operator.
                problem = (
                    f"a number has more than {sys.get_int_max_str_digits()} digits"
                )
        except RecursionError:
            problem = "nested too deeply"
        else:
            if not isinstance(document, dict):
                # flask-openapi3 would decode a JSON string a second time and
                # accept the object inside it.
                raise validation_failed(
                    [
                        {
                            "field": "body",
                            "message": "expected a JSON object, got "
                            f"{_json_type_name(document)}",
                        }
                    ]
                )
            _reject_nul_characters(document, path="")
            return
    raise ApiError(
        400,
        "invalid_json",
        f"request body is not valid JSON ({problem}); send one JSON object",
    )


def _json_type_name(value: Any) -> str:
    """Return the JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def _reject_nul_characters(value: Any, *, path: str) -> None:
    """Raise 422 naming the first field whose key or text contains U+0000.

    PostgreSQL cannot store that character in text or JSONB, so it is
    rejected here rather than failing the insert with a 500.
    """
    if isinstance(value, str) and "\x00" in value:
        raise validation_failed(
            [{"field": path or "body", "message": "must not contain U+0000"}]
        )
    if isinstance(value, dict):
        for key, item in value.items():
            field = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                raise validation_failed(
                    [{"field": field, "message": "key must not contain U+0000"}]
                )
            _reject_nul_characters(item, path=field)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nul_characters(item, path=f"{path}[{index}]")


def reject_nul_in_query() -> None:
    """Reject query parameters that contain U+0000 or are repeated, naming them.

    The query models read the first of repeated values and would ignore the
    rest without a word.
    """
    for name, value in request.args.items(multi=True):
        if "\x00" in name or "\x00" in value:
            raise validation_failed(
                [{"field": name, "message": "must not contain U+0000"}]
            )
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise validation_failed(
                [{"field": name, "message": "given more than once; send it once"}]
            )


def _ascii_digits(value: object) -> object:
    if isinstance(value, str) and not ASCII_DIGITS.fullmatch(value):
        raise ValueError("expected a whole number written with the digits 0-9")
    return value


ASCII_DIGITS = re.compile(r"[0-9]{1,19}")
# A whole number in a query string, written only with ASCII digits: Python's
# int() also accepts signs, underscores and other scripts' digits.
QueryInt = Annotated[int, BeforeValidator(_ascii_digits)]


def _reject_cut_stream(read_bytes: int) -> None:
    """Raise 413 when a body without Content-Length went past the limit.

    Werkzeug 3.1 stops reading such a (chunked) body at MAX_CONTENT_LENGTH
    without an error, so reading one more byte from the server's stream shows
    whether the body was cut short.
    """
    limit = request.max_content_length
    if request.content_length is not None or limit is None or read_bytes < limit:
        return
    if request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def handle_api_error(exc: ApiError) -> Response:
    return error_response(
        exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers
    )


def handle_http_exception(exc: HTTPException) -> Response:
    """Return Flask's and Werkzeug's own errors (404, 405, 413 ...) as JSON."""
    status = exc.code or 500
    code = HTTP_ERROR_CODES.get(status) or _snake_case(exc.name)
    message = exc.description or exc.name
    details: dict[str, Any] = {}
    headers = {
        name: value
        for name, value in exc.get_headers()
        if name.lower() not in ("content-type", "content-length")
    }

    if status == 404:
        message = (
            f"no route matches {request.path}; "
            "the routes are listed at /v1/openapi.json"
        )
    elif status == 405:
        allowed = sorted(getattr(exc, "valid_methods", None) or [])
        message = (
            f"method {request.method} is not allowed on {request.path}; "
            f"allowed: {', '.join(allowed)}"
        )
        details = {"allowed_methods": allowed}
    elif status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = (
            f"request body is larger than the limit of {limit} bytes; "
            "send a smaller body"
        )
        details = {"max_bytes": limit}
    return error_response(status, code, message, details=details, headers=headers)


def handle_unexpected_error(exc: Exception) -> Response:
    # after_request logs it once, with the traceback and the request id.
    g.unhandled_exception = exc
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return error_response(
            503,
            "service_unavailable",
            "the database or Redis is unavailable; retry after "
            f"{RETRY_AFTER_S} seconds",
            details={"request_id": g.get("request_id")},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return error_response(
        500,
        "internal_error",
        "the server failed to handle the request; report the request id "
        f"{g.get('request_id', '')} to the operator",
        details={"request_id": g.get("request_id")},
    )


def finish_response(response: Response) -> Response:
    """Add the request id, and log one record for each 5xx response."""
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers[REQUEST_ID_HEADER] = request_id
    if response.status_code >= 500:
        exc = g.get("unhandled_exception")
        logger.error(
            "%s %s failed with status %d: %s",
            request.method,
            request.path,
            response.status_code,
            g.get("error_message", "no message"),
            exc_info=(type(exc), exc, exc.__traceback__) if exc else None,
            extra={"request_id": request_id},
        )
    return response


def _snake_case(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handling(app: Flask) -> None:
    """Install the request-id hooks and the handlers of every error."""
    app.json = StrictJSONProvider(app)
    app.before_request(assign_request_id)
    app.after_request(finish_response)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected_error)
