"""The web process as the Procfile runs it: gunicorn with the project's config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from sqlalchemy import func, select

from infra.db import transaction
from models.api_keys import ApiKeyRole, create_api_key
from models.tenants import Tenant
from tests.conftest import ROOT, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gunicorn_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:web.gunicorn_config",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--no-control-socket",
        "web:create_app()",
    ]


def test_invalid_setting_stops_gunicorn():
    environment = {**os.environ, "DB_POOL_SIZE": "abc"}

    finished = subprocess.run(
        gunicorn_command(free_port()),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 1
    assert "web app not started: invalid configuration: DB_POOL_SIZE:" in (
        finished.stderr
    )
    assert "Booting worker" not in finished.stderr
    assert "Traceback" not in finished.stderr


def send_raw(port: int, request: bytes) -> bytes:
    """Send ``request``, close the sending side, and return the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_body_shorter_than_content_length_commits_nothing(broker, spawn):
    with transaction() as session:
        _, secret = create_api_key(session, name="e2e", role=ApiKeyRole.OPERATOR)
    port = free_port()
    web = spawn(*gunicorn_command(port))
    wait_for(lambda: _answers(port), timeout_s=30)
    body = b'{"name": "Truncated clinic", "plan_price_cents": 100}'
    head = (
        "POST /v1/tenants HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Authorization: Bearer {secret}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body) + 100}\r\n"
        "\r\n"
    ).encode()

    response = send_raw(port, head + body)

    assert response.startswith(b"HTTP/1.1 400"), response[:200]
    assert b"incomplete_body" in response
    with transaction() as session:
        count = session.scalar(select(func.count()).select_from(Tenant))
    assert count == 0
    assert web.poll() is None, web.log()


def _answers(port: int) -> bool:
    try:
        response = send_raw(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    except OSError:
        return False
    return response.split(b"\r\n", 1)[0].endswith(b" 200 OK")
