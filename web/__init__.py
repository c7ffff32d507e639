"""The HTTP API: JSON under /v1, bearer API keys, and an OpenAPI document.

Run it with ``flask --app web run`` in development or ``gunicorn 'web:create_app()'``.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from flask_openapi3 import Info, OpenAPI, Tag
from werkzeug.routing import IntegerConverter

from actors.broker import setup_broker
from actors.middleware import LedgerMiddleware
from infra.logging import configure_logging
from infra.redis import get_redis
from infra.settings import Settings, SettingsError, get_settings
from web import health, jobs, ops, tenants
from web.auth import SECURITY_SCHEME
from web.cli import keys
from web.errors import (
    ErrorResponse,
    register_error_handling,
    reject_nul_in_query,
    validation_error_response,
)

API_VERSION = "1"
OPENAPI_PATH = "/v1/openapi.json"


class VetqueueOpenAPI(OpenAPI):
    """flask-openapi3's app, with three changes to the document it generates.

    flask-openapi3 4.3 adds a 422 response, documented as a list of errors, to
    each operation that does not declare one. Every vetqueue operation that
    can return 422 declares it with the error shape, so the added ones are
    removed. It also joins docstring lines with ``<br/>``, which turns line
    wrapping into line breaks, so descriptions are rejoined into paragraphs.
    Last, ``params`` of a new job gets each job type's params model.
    """

    def generate_spec_json(self) -> None:
        super().generate_spec_json()
        added_422 = {
            "type": "array",
            "items": {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"},
        }
        for path_item in self.spec_json["paths"].values():
            for operation in path_item.values():
                response = operation.get("responses", {}).get("422", {})
                content = response.get("content", {}).get("application/json", {})
                if content.get("schema") == added_422:
                    del operation["responses"]["422"]
                if "description" in operation:
                    operation["description"] = _paragraphs(operation["description"])
        jobs.document_job_params(self.spec_json)


def _paragraphs(joined: str) -> str:
    lines = joined.split("<br/>")
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(paragraph) for paragraph in paragraphs if paragraph)


def create_app(config: dict[str, Any] | None = None) -> VetqueueOpenAPI:
    """Build the app from the environment's settings; ``config`` overrides Flask's.

    Exits with a one-line message naming the variable when a setting is
    invalid, as the worker and the scheduler do, rather than with a traceback
    from every process that loads the app.
    """
    try:
        settings = get_settings()
    except SettingsError as error:
        raise SystemExit(f"web app not started: {error}") from None
    configure_logging(settings.log_level)
    broker = _ensure_broker(settings)

    app = _new_app()
    app.url_map.converters["int"] = AsciiIntegerConverter
    # A path with doubled slashes gets the JSON 404 of every other unknown
    # path, instead of Werkzeug's redirect with an HTML body.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config.update(config or {})
    app.extensions["vetqueue"] = {
        "settings": settings,
        "redis": get_redis(),
        "broker": broker,
    }

    register_error_handling(app)
    app.before_request(reject_nul_in_query)
    for blueprint in (health.api, jobs.api, tenants.api, ops.api):
        app.register_api(blueprint)
    app.cli.add_command(keys)

    @app.get(
        OPENAPI_PATH,
        operation_id="getOpenApiDocument",
        tags=[Tag(name="meta", description="This document")],
        responses={
            200: {
                "description": "This OpenAPI document.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    def openapi_document() -> dict[str, Any]:
        """Return this OpenAPI document"""
        return app.api_doc

    return app


class AsciiIntegerConverter(IntegerConverter):
    """The ``int`` path converter, for ids written only with the digits 0-9.

    werkzeug's converter matches any Unicode digit, so a path with the
    Arabic-Indic digit one (U+0661) would read tenant 1. Leading zeros are
    not matched either, so each resource has one path.
    """

    regex = "0|[1-9][0-9]*"


def _new_app() -> VetqueueOpenAPI:
    return VetqueueOpenAPI(
        __name__,
        info=Info(
            title="vetqueue API",
            version=API_VERSION,
            description="Background jobs, tenants and billing of the clinic "
            "platform. Every error has the body "
            '{"error": {"code", "message", "details"}}.',
        ),
        security_schemes={
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key made with 'flask --app web keys create'.",
            }
        },
        validation_error_status=422,
        validation_error_model=ErrorResponse,
        validation_error_callback=validation_error_response,
        doc_ui=False,
        static_folder=None,
    )


def _ensure_broker(settings: Settings) -> dramatiq.Broker:
    """Return the process's ledger broker, setting it up unless one exists.

    Tests build several apps in one process after a fixture set the broker up,
    and a second ``setup_broker`` would replace the broker that their
    in-process workers consume from.
    """
    current = dramatiq.broker.global_broker
    if (
        isinstance(current, RedisBroker)
        and current.namespace == settings.dramatiq_namespace
        and any(isinstance(m, LedgerMiddleware) for m in current.middleware)
    ):
        return current
    return setup_broker(settings)
