"""StripeTestServer and localstripe, driven through the real stripe-python client."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import stripe

from devservers.localstripe_server import start_localstripe
from devservers.stripe_server import StripeTestServer

API_KEY = "sk_test_x"

DECLINE_CASES = [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
    ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
    ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
    ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
]


@pytest.fixture
def server() -> Iterator[StripeTestServer]:
    with StripeTestServer() as running:
        yield running


def make_client(url: str, **options: Any) -> stripe.StripeClient:
    # SDK retries are off unless a test sets them, so each call gets one response.
    options.setdefault("max_network_retries", 0)
    return stripe.StripeClient(API_KEY, base_addresses={"api": url}, **options)


@pytest.fixture
def client(server: StripeTestServer) -> stripe.StripeClient:
    return make_client(server.url)


def create(
    client: stripe.StripeClient,
    *,
    key: str | None = None,
    payment_method: str = "pm_card_visa",
    amount: int = 4200,
) -> stripe.PaymentIntent:
    params: dict[str, Any] = {
        "amount": amount,
        "currency": "eur",
        "customer": "cus_test",
        "payment_method": payment_method,
        "confirm": True,
        "off_session": True,
        "metadata": {"invoice_id": "inv_1", "clinic_id": "cl_1"},
    }
    options: dict[str, Any] = {"idempotency_key": key} if key else {}
    return client.v1.payment_intents.create(params=params, options=options)


def wait_for(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_create_visa_succeeds(server: StripeTestServer, client: stripe.StripeClient):
    intent = create(client, key="visa-1")

    assert intent.id.startswith("pi_")
    assert intent.object == "payment_intent"
    assert intent.status == "succeeded"
    assert intent.amount == 4200
    assert intent.currency == "eur"
    assert intent.customer == "cus_test"
    assert intent.payment_method == "pm_card_visa"
    assert intent.latest_charge.startswith("ch_")
    assert intent.metadata.to_dict() == {"invoice_id": "inv_1", "clinic_id": "cl_1"}
    assert isinstance(intent.created, int)
    assert [stored["id"] for stored in server.payment_intents()] == [intent.id]


@pytest.mark.parametrize(("payment_method", "code", "decline_code"), DECLINE_CASES)
def test_create_declined_card_raises_card_error(
    server: StripeTestServer,
    client: stripe.StripeClient,
    payment_method: str,
    code: str,
    decline_code: str,
):
    with pytest.raises(stripe.CardError) as caught:
        create(client, payment_method=payment_method)

    error = caught.value
    assert error.http_status == 402
    assert error.code == code
    assert error.error is not None
    assert error.error.type == "card_error"
    assert error.error.decline_code == decline_code
    assert error.error.payment_intent.status == "requires_payment_method"
    assert error.error.payment_intent.last_payment_error.decline_code == decline_code
    assert server.payment_intents() == []
    assert len(server.declined_payment_intents()) == 1


def test_decline_replayed_for_same_key(
    server: StripeTestServer, client: stripe.StripeClient
):
    with pytest.raises(stripe.CardError) as first:
        create(client, key="decline-1", payment_method="pm_card_chargeDeclined")

    with pytest.raises(stripe.CardError) as replay:
        create(client, key="decline-1", payment_method="pm_card_chargeDeclined")

    first_intent = first.value.error.payment_intent
    assert replay.value.error.payment_intent.id == first_intent.id
    assert replay.value.headers.get("Idempotent-Replayed") == "true"
    assert len(server.declined_payment_intents()) == 1
    assert server.request_count == 2


def test_same_key_other_params_raises_idempotency_error(
    server: StripeTestServer, client: stripe.StripeClient
):
    create(client, key="params-1", amount=4200)

    with pytest.raises(stripe.IdempotencyError) as caught:
        create(client, key="params-1", amount=9900)

    assert caught.value.http_status == 400
    assert caught.value.error.type == "idempotency_error"
    assert len(server.payment_intents()) == 1


def test_same_key_in_flight_returns_409(
    server: StripeTestServer, client: stripe.StripeClient
):
    server.add_faults([{"kind": "delay", "seconds": 1.0}])
    with ThreadPoolExecutor(max_workers=1) as executor:
        first = executor.submit(create, client, key="in-flight-1")
        wait_for(lambda: server.request_count == 1)
        # The first request takes the key right after it is counted.
        time.sleep(0.2)

        with pytest.raises(stripe.APIError) as caught:
            create(client, key="in-flight-1")

        first_intent = first.result(timeout=5)

    assert caught.value.http_status == 409
    # The SDK builds APIError without a code, so the code is on the error object.
    assert caught.value.code is None
    assert caught.value.error.code == "idempotency_key_in_use"
    assert caught.value.error.type == "invalid_request_error"
    assert first_intent.status == "succeeded"
    assert len(server.payment_intents()) == 1


def test_drop_after_charge_replays_same_intent(
    server: StripeTestServer, client: stripe.StripeClient
):
    server.add_faults([{"kind": "drop_after_charge"}])
    with pytest.raises(stripe.APIConnectionError):
        create(client, key="drop-after-1")

    replay = create(client, key="drop-after-1")

    stored = server.payment_intents()
    assert len(stored) == 1
    assert replay.id == stored[0]["id"]
    assert replay.status == "succeeded"
    assert replay.last_response.headers.get("Idempotent-Replayed") == "true"


def test_drop_before_charges_nothing(
    server: StripeTestServer, client: stripe.StripeClient
):
    server.add_faults([{"kind": "drop_before"}])

    with pytest.raises(stripe.APIConnectionError):
        create(client, key="drop-before-1")

    assert server.payment_intents() == []
    assert create(client, key="drop-before-1").status == "succeeded"


def test_server_error_then_success_same_key(
    server: StripeTestServer, client: stripe.StripeClient
):
    server.add_faults([{"kind": "status", "status": 500}])
    with pytest.raises(stripe.APIError) as caught:
        create(client, key="error-500-1")

    intent = create(client, key="error-500-1")

    assert caught.value.http_status == 500
    assert caught.value.error.type == "api_error"
    assert intent.status == "succeeded"
    assert len(server.payment_intents()) == 1


def test_server_error_retried_by_sdk(server: StripeTestServer):
    server.add_faults([{"kind": "status", "status": 503}])
    retrying_client = make_client(server.url, max_network_retries=2)

    intent = retrying_client.v1.payment_intents.create(
        params={
            "amount": 100,
            "currency": "eur",
            "payment_method": "pm_card_visa",
            "confirm": True,
        },
    )

    assert intent.status == "succeeded"
    assert server.request_count == 2


def test_rate_limit_not_saved(server: StripeTestServer, client: stripe.StripeClient):
    server.add_faults([{"kind": "status", "status": 429}])
    with pytest.raises(stripe.RateLimitError) as caught:
        create(client, key="rate-limit-1")

    intent = create(client, key="rate-limit-1")

    assert caught.value.http_status == 429
    assert caught.value.error.code == "rate_limit"
    assert intent.status == "succeeded"
    assert intent.last_response.headers.get("Idempotent-Replayed") is None


def test_invalid_amount_not_saved(
    server: StripeTestServer, client: stripe.StripeClient
):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, key="invalid-1", amount=0)

    intent = create(client, key="invalid-1", amount=4200)

    assert caught.value.http_status == 400
    assert caught.value.param == "amount"
    assert intent.status == "succeeded"


def test_missing_currency_returns_400(client: stripe.StripeClient):
    params = {"amount": 100, "payment_method": "pm_card_visa", "confirm": True}

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params=params)

    assert caught.value.param == "currency"
    assert caught.value.code == "parameter_missing"


def test_missing_api_key_returns_401(server: StripeTestServer):
    request = urllib.request.Request(
        f"{server.url}/v1/payment_intents", data=b"amount=100", method="POST"
    )

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)

    assert caught.value.code == 401
    body = json.loads(caught.value.read())
    assert body["error"]["type"] == "invalid_request_error"
    assert server.payment_intents() == []


def test_retrieve_known_and_unknown_intent(client: stripe.StripeClient):
    created = create(client)

    retrieved = client.v1.payment_intents.retrieve(created.id)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.retrieve("pi_unknown")

    assert retrieved.id == created.id
    assert retrieved.status == "succeeded"
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"


def test_fault_match_skips_other_requests(
    server: StripeTestServer, client: stripe.StripeClient
):
    server.add_faults(
        [{"kind": "status", "status": 500, "match": {"idempotency_key_prefix": "b-"}}]
    )

    unmatched = create(client, key="a-1")
    with pytest.raises(stripe.APIError):
        create(client, key="b-1")

    assert unmatched.status == "succeeded"
    assert len(server.payment_intents()) == 1


def test_delay_past_client_timeout_still_charges(server: StripeTestServer):
    server.add_faults([{"kind": "delay", "seconds": 0.6}])
    impatient_client = make_client(
        server.url, http_client=stripe.RequestsClient(timeout=0.2)
    )
    with pytest.raises(stripe.APIConnectionError):
        create(impatient_client, key="timeout-1")
    wait_for(lambda: len(server.payment_intents()) == 1)

    replay = create(impatient_client, key="timeout-1")

    assert replay.id == server.payment_intents()[0]["id"]


def test_concurrent_creates_all_succeed(
    server: StripeTestServer, client: stripe.StripeClient
):
    server.set_latency(latency_ms=50)
    keys = [f"concurrent-{index}" for index in range(60)]

    with ThreadPoolExecutor(max_workers=60) as executor:
        intents = list(executor.map(lambda key: create(client, key=key), keys))

    assert all(intent.status == "succeeded" for intent in intents)
    assert len({intent.id for intent in intents}) == 60
    assert len(server.payment_intents()) == 60
    assert server.request_count == 60


def post_intent(connection: http.client.HTTPConnection, key: str) -> tuple[int, int]:
    """POST a PaymentIntent on ``connection``; return the status and HTTP version."""
    body = urllib.parse.urlencode(
        {
            "amount": 4200,
            "currency": "eur",
            "customer": "cus_test",
            "payment_method": "pm_card_visa",
            "confirm": "true",
        }
    )
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/x-www-form-urlencoded",
        "Idempotency-Key": key,
    }
    connection.request("POST", "/v1/payment_intents", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status, response.version


def test_keep_alive_server_serves_requests_on_one_connection():
    with StripeTestServer(keep_alive=True) as running:
        port = int(running.url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        first = post_intent(connection, "keep-alive-1")
        sock = connection.sock
        second = post_intent(connection, "keep-alive-2")

        assert first == (200, 11)
        assert second == (200, 11)
        assert connection.sock is sock, "the second request opened a new connection"
        assert len(running.payment_intents()) == 2
        connection.close()


def test_default_server_closes_each_connection(server: StripeTestServer):
    port = int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    status, version = post_intent(connection, "close-1")

    assert (status, version) == (200, 10)
    assert connection.sock is None, "the server kept an HTTP/1.0 connection open"


def test_keep_alive_drop_after_charge_closes_connection():
    with StripeTestServer(keep_alive=True) as running:
        running.add_faults([{"kind": "drop_after_charge"}])
        client = make_client(running.url)

        with pytest.raises(stripe.APIConnectionError):
            create(client, key="drop-keep-alive")
        replayed = create(client, key="drop-keep-alive")

        [charged] = running.payment_intents()
        assert replayed.id == charged["id"]


def test_cli_server_controlled_over_http():
    process = subprocess.Popen(
        [sys.executable, "-m", "devservers.stripe_server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        faults = json.dumps({"faults": [{"kind": "status", "status": 503}]}).encode()
        urllib.request.urlopen(f"{url}/_test/faults", data=faults, timeout=5).close()

        with pytest.raises(stripe.APIError) as caught:
            create(make_client(url))
        with urllib.request.urlopen(f"{url}/_test/payment_intents", timeout=5) as reply:
            listing = json.loads(reply.read())
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)

    assert url.startswith("http://127.0.0.1:")
    assert caught.value.http_status == 503
    assert listing == {"data": [], "declined": [], "requests": 1}
    assert returncode == 0


def test_localstripe_charges_visa():
    process, url = start_localstripe()
    try:
        client = make_client(url)
        customer = client.v1.customers.create(params={"email": "owner@example.com"})
        client.v1.payment_methods.attach(
            "pm_card_visa", params={"customer": customer.id}
        )

        intent = create_on_localstripe(client, customer_id=customer.id)
    finally:
        process.terminate()
        returncode = process.wait(timeout=10)

    assert url.startswith("http://127.0.0.1:")
    assert intent.status == "succeeded"
    assert returncode == 0


def test_localstripe_declines_card_0341_at_charge():
    process, url = start_localstripe()
    try:
        client = make_client(url)
        customer = client.v1.customers.create(params={"email": "owner@example.com"})
        card = {"number": "4000000000000341", "exp_month": 12, "exp_year": 2030}
        payment_method = client.v1.payment_methods.create(
            params={"type": "card", "card": {**card, "cvc": "123"}}
        )
        attached = client.v1.payment_methods.attach(
            payment_method.id, params={"customer": customer.id}
        )

        with pytest.raises(stripe.CardError) as caught:
            create_on_localstripe(
                client, customer_id=customer.id, payment_method=payment_method.id
            )
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert attached.customer == customer.id
    assert caught.value.http_status == 402
    assert caught.value.code == "card_declined"
    assert caught.value.error.decline_code is None


def test_localstripe_port_in_use_raises():
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()

        with pytest.raises(RuntimeError, match="exited with code"):
            start_localstripe(occupant.getsockname()[1])


def create_on_localstripe(
    client: stripe.StripeClient,
    *,
    customer_id: str,
    payment_method: str = "pm_card_visa",
) -> stripe.PaymentIntent:
    params: dict[str, Any] = {
        "customer": customer_id,
        "payment_method": payment_method,
        "amount": 4200,
        "currency": "eur",
        "confirm": True,
        "off_session": True,
    }
    return client.v1.payment_intents.create(params=params)
