"""The Stripe HTTP client against loopback servers: proxy, TLS, timeouts, refusals."""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe
import trustme

from devservers.stripe_server import StripeTestServer
from infra.stripe_client import Urllib3Client, get_stripe
from tests.conftest import closed_port, reconfigure

API_KEY = "sk_test_vetqueue_client"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding"}


def make_client(url: str, *, read_timeout_s: float = 5.0) -> stripe.StripeClient:
    http_client = Urllib3Client(connect_timeout_s=2.0, read_timeout_s=read_timeout_s)
    return stripe.StripeClient(
        API_KEY,
        base_addresses={"api": url},
        http_client=http_client,
        max_network_retries=0,
    )


def create_intent(client: stripe.StripeClient, key: str) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(
        params={
            "amount": 4900,
            "currency": "eur",
            "customer": "cus_client",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "off_session": True,
        },
        options={"idempotency_key": key},
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str]]
    required_auth: str | None = None


def serve(
    handler: type[BaseHTTPRequestHandler], *, required_auth: str | None = None
) -> _Server:
    server = _Server(("127.0.0.1", 0), handler)
    server.seen = []
    server.required_auth = required_auth
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _ForwardProxy(BaseHTTPRequestHandler):
    """An HTTP proxy handler that forwards absolute-form requests to loopback."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        self.server.seen.append((self.command, self.path))
        required = self.server.required_auth
        if required is not None and self.headers.get("Proxy-Authorization") != required:
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        target = urllib.parse.urlsplit(self.path)
        if target.hostname not in ("127.0.0.1", "::1"):
            self.send_error(403, "this proxy forwards to loopback only")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() not in HOP_BY_HOP
        }

        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()

        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP | {"content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _CountingHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen.append((self.command, self.path))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stripe_test_server() -> Iterator[StripeTestServer]:
    with StripeTestServer() as running:
        yield running


@pytest.fixture
def forward_proxy() -> Iterator[_Server]:
    proxy = serve(_ForwardProxy)
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.fixture
def self_signed_server() -> Iterator[_Server]:
    """An HTTPS server whose certificate is signed by a throwaway test CA."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = _Server(("127.0.0.1", 0), _CountingHandler)
    server.seen = []
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def charge_through_proxy(
    stripe_test_server: StripeTestServer, proxy_url: str, key: str
) -> stripe.PaymentIntent:
    """Confirm a PaymentIntent with the process's client configured for a proxy."""
    original_base = os.environ["STRIPE_API_BASE"]
    reconfigure(STRIPE_API_BASE=stripe_test_server.url, STRIPE_PROXY_URL=proxy_url)
    try:
        return create_intent(get_stripe(), key)
    finally:
        os.environ.pop("STRIPE_PROXY_URL")
        reconfigure(STRIPE_API_BASE=original_base)


def test_charge_goes_through_proxy(stripe_test_server, forward_proxy, stripe_server):
    proxy_url = f"http://127.0.0.1:{forward_proxy.server_address[1]}"

    intent = charge_through_proxy(stripe_test_server, proxy_url, "proxy-1")

    assert intent.status == "succeeded"
    assert forward_proxy.seen == [
        ("POST", f"{stripe_test_server.url}/v1/payment_intents")
    ]
    assert len(stripe_test_server.payment_intents()) == 1


@pytest.fixture
def auth_proxy() -> Iterator[_Server]:
    """A forward proxy that requires the user clinic with the password s3cr@t€."""
    expected = "Basic " + base64.b64encode("clinic:s3cr@t€".encode()).decode()
    proxy = serve(_ForwardProxy, required_auth=expected)
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_proxy_credentials_sent_as_basic_auth(
    stripe_test_server, auth_proxy, stripe_server
):
    port = auth_proxy.server_address[1]
    proxy_url = f"http://clinic:s3cr%40t%E2%82%AC@127.0.0.1:{port}"

    intent = charge_through_proxy(stripe_test_server, proxy_url, "proxy-auth-1")

    assert intent.status == "succeeded"
    assert len(auth_proxy.seen) == 1


def test_wrong_proxy_password_not_retryable(
    stripe_test_server, auth_proxy, stripe_server
):
    proxy_url = f"http://clinic:wrong@127.0.0.1:{auth_proxy.server_address[1]}"

    with pytest.raises(stripe.APIConnectionError) as caught:
        charge_through_proxy(stripe_test_server, proxy_url, "proxy-auth-2")

    assert caught.value.should_retry is False
    assert "407 Proxy Authentication Required" in str(caught.value)
    assert "wrong" not in str(caught.value)
    assert stripe_test_server.payment_intents() == []


def test_untrusted_certificate_not_retryable(self_signed_server):
    port = self_signed_server.server_address[1]
    client = make_client(f"https://127.0.0.1:{port}")

    with pytest.raises(stripe.APIConnectionError) as caught:
        client.v1.balance.retrieve()

    assert caught.value.should_retry is False
    assert "SSLError" in str(caught.value)
    assert self_signed_server.seen == []


def test_read_timeout_retryable(stripe_test_server):
    stripe_test_server.set_latency(latency_ms=600)
    client = make_client(stripe_test_server.url, read_timeout_s=0.2)

    with pytest.raises(stripe.APIConnectionError) as caught:
        create_intent(client, "slow-1")

    assert caught.value.should_retry is True
    assert "ReadTimeoutError" in str(caught.value)


def test_refused_connection_retryable():
    client = make_client(f"http://127.0.0.1:{closed_port()}")

    with pytest.raises(stripe.APIConnectionError) as caught:
        create_intent(client, "refused-1")

    assert caught.value.should_retry is True
    assert "NewConnectionError" in str(caught.value)
