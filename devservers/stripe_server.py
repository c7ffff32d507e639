"""Stripe test server for the one Stripe call vetqueue makes: a confirmed PaymentIntent.

localstripe ignores ``Idempotency-Key`` and declines test cards at attach time without
a decline code, so charging tests use this server. It listens on 127.0.0.1 only and
keeps its state in memory.

Modelled, after Stripe's API reference and checked with stripe-python 16.1.0:

- ``POST /v1/payment_intents`` with form-encoded ``amount``, ``currency``,
  ``customer``, ``payment_method``, ``confirm=true``, ``off_session``,
  ``description`` and ``metadata[...]``, returning a ``succeeded`` PaymentIntent
  with a ``latest_charge``.
- ``GET /v1/payment_intents/{id}``, with 404 ``resource_missing`` for unknown ids.
- 401 unless ``Authorization: Bearer sk_test_...`` is sent.
- Charge-time declines of the test PaymentMethods in ``DECLINES``: 402, type
  ``card_error``, ``code``, ``decline_code`` and the PaymentIntent in status
  ``requires_payment_method``. Any other ``pm_`` id succeeds.
- Validation of ``amount``, ``currency``, ``payment_method`` and ``confirm`` before
  the idempotency layer, so a 400 is never saved under a key.
- Idempotency keys, scoped per API key: the first response (success or decline) is
  saved and replayed with ``Idempotent-Replayed: true``. The same key with other
  parameters gets 400 ``idempotency_error``, and while its first request runs, 409
  ``idempotency_key_in_use``.

Not modelled: ``confirm=false``, 3-D Secure, manual capture, Customer and
PaymentMethod objects (ids are not checked), Basic auth, per-currency minimum
amounts, key expiry after 24 hours, ``Stripe-Should-Retry``, webhooks, lists and
``expand``. Unknown parameters are ignored, where Stripe rejects them. A missing
``payment_method`` is a 400, where Stripe would use the customer's default.

Test control over HTTP, without authentication, so a test can drive a server that
runs in another process. ``POST /_test/faults`` with ``{"faults": [...]}`` appends
to a FIFO queue. Each ``POST /v1/payment_intents`` takes the first fault whose
optional ``match`` (``{"payment_method": ...}`` or ``{"idempotency_key_prefix":
...}``) fits it, leaving the others queued. Fault kinds:

- ``{"kind": "status", "status": 500}`` (429 or 5xx): error response, nothing saved.
- ``{"kind": "drop_before"}``: connection closed, nothing charged.
- ``{"kind": "drop_after_charge"}``: processed as usual (charged and saved under its
  key), then the connection is closed without a response.
- ``{"kind": "delay", "seconds": 2.5}``: sleeps, then processes normally. A request
  that charges keeps its idempotency key reserved while it sleeps, so the same key
  gets 409 meanwhile.
- ``{"kind": "processing"}``: the PaymentIntent is created in status
  ``processing`` with nothing received yet, as for a payment method that settles
  later, and saved under its key like any other response.

``DELETE /_test/faults`` clears the queue. ``POST /_test/config`` with
``{"latency_ms": 50}`` delays every payment_intents request before its key is taken.
``GET /_test/payment_intents`` returns ``{"data": [succeeded], "declined": [the
others: declined or processing], "requests": POST count}``. ``POST /_test/reset``
clears everything.

Connections close after each response (HTTP/1.0), so a test that stops the
server leaves no connection open. ``StripeTestServer(keep_alive=True)`` keeps
them open for further requests (HTTP/1.1), as Stripe's API does, so that a
benchmark does not pay for a new connection per request.

Run ``python -m devservers.stripe_server --port N``. It prints its URL and stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import secrets
import signal
import string
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_ID_ALPHABET = string.ascii_letters + string.digits
_METADATA_KEY = re.compile(r"^metadata\[(.+)\]$")
_PAYMENT_INTENT_PATH = re.compile(r"^/v1/payment_intents/(\w+)$")
_FAULT_KINDS = ("status", "drop_before", "drop_after_charge", "delay", "processing")

Response = tuple[int, dict[str, Any]]
Parameters = dict[str, list[str]]


@dataclass(frozen=True)
class Decline:
    """Error that a test PaymentMethod returns when charged."""

    code: str
    decline_code: str
    message: str = "Your card was declined."
    param: str | None = None


# Codes and messages of Stripe's test PaymentMethods that fail at charge time.
DECLINES: dict[str, Decline] = {
    "pm_card_chargeDeclined": Decline("card_declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": Decline(
        "card_declined", "insufficient_funds", "Your card has insufficient funds."
    ),
    "pm_card_chargeDeclinedLostCard": Decline("card_declined", "lost_card"),
    "pm_card_chargeDeclinedStolenCard": Decline("card_declined", "stolen_card"),
    "pm_card_chargeDeclinedExpiredCard": Decline(
        "expired_card", "expired_card", "Your card has expired.", "exp_month"
    ),
    "pm_card_chargeDeclinedProcessingError": Decline(
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "pm_card_chargeDeclinedIncorrectCvc": Decline(
        "incorrect_cvc",
        "incorrect_cvc",
        "Your card's security code is incorrect.",
        "cvc",
    ),
}


@dataclass(frozen=True)
class _Fault:
    kind: str
    status: int = 500
    seconds: float = 0.0
    payment_method: str | None = None
    idempotency_key_prefix: str | None = None

    def matches(self, *, payment_method: str | None, key: str | None) -> bool:
        if self.payment_method not in (None, payment_method):
            return False
        prefix = self.idempotency_key_prefix
        return prefix is None or (key or "").startswith(prefix)


def _parse_fault(spec: Any) -> _Fault:
    """Build a fault from its JSON form, raising ValueError for an invalid one."""
    if not isinstance(spec, dict) or spec.get("kind") not in _FAULT_KINDS:
        raise ValueError(f"invalid fault {spec!r}: kind must be one of {_FAULT_KINDS}")
    match = spec.get("match") or {}
    if not isinstance(match, dict) or not set(match) <= {
        "payment_method",
        "idempotency_key_prefix",
    }:
        raise ValueError(f"invalid fault match {match!r}")
    status = spec.get("status", 500)
    if not isinstance(status, int) or not (status == 429 or 500 <= status <= 599):
        raise ValueError(f"invalid fault status {status!r}: expected 429 or 5xx")
    seconds = spec.get("seconds", 0.0)
    if not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"invalid fault seconds {seconds!r}: expected >= 0")
    return _Fault(spec["kind"], status, float(seconds), **match)


@dataclass(frozen=True)
class _SavedResponse:
    parameters: tuple[tuple[str, tuple[str, ...]], ...]
    status: int
    body: dict[str, Any]
    request_id: str


class _State:
    """State shared by the handler threads, read and written only under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.faults: list[_Fault] = []
            self.payment_intents: dict[str, dict[str, Any]] = {}
            self.saved: dict[tuple[str, str], _SavedResponse] = {}
            self.in_flight: set[tuple[str, str]] = set()
            self.request_count = 0
            self.active_requests = 0
            self.max_active_requests = 0
            self.latency_seconds = 0.0

    def add_faults(self, specs: list[Any]) -> int:
        faults = [_parse_fault(spec) for spec in specs]
        with self.lock:
            self.faults.extend(faults)
        return len(faults)

    def clear_faults(self) -> int:
        with self.lock:
            count = len(self.faults)
            self.faults.clear()
        return count

    def take_fault(
        self, *, payment_method: str | None, key: str | None
    ) -> _Fault | None:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.matches(payment_method=payment_method, key=key):
                    return self.faults.pop(index)
        return None

    def set_latency(self, latency_ms: Any) -> None:
        if not isinstance(latency_ms, int | float) or latency_ms < 0:
            raise ValueError(f"invalid latency_ms {latency_ms!r}: expected >= 0")
        with self.lock:
            self.latency_seconds = latency_ms / 1000

    def sleep_latency(self) -> None:
        with self.lock:
            seconds = self.latency_seconds
        time.sleep(seconds)

    def list_payment_intents(self, *, declined: bool) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(intent)
                for intent in self.payment_intents.values()
                if (intent["status"] != "succeeded") == declined
            ]


def _random_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _error(status: int, message: str, **fields: Any) -> Response:
    """Build a Stripe error response, of type invalid_request_error unless given."""
    error = {"type": "invalid_request_error", "message": message, **fields}
    return status, {"error": error}


def _last(parameters: Parameters, name: str) -> str:
    return parameters.get(name, [""])[-1]


def _validate(parameters: Parameters) -> Response | None:
    """Return the 400 response for invalid create parameters, or None if valid."""
    for name in ("amount", "currency", "payment_method"):
        if not _last(parameters, name):
            message = f"Missing required param: {name}."
            return _error(400, message, code="parameter_missing", param=name)
    amount = _last(parameters, "amount")
    if not (amount.isascii() and amount.isdigit() and int(amount) >= 1):
        message = f"Invalid integer: {amount}. Expected a positive integer."
        return _error(400, message, code="parameter_invalid_integer", param="amount")
    currency = _last(parameters, "currency")
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
        return _error(400, f"Invalid currency: {currency}.", param="currency")
    payment_method = _last(parameters, "payment_method")
    if not payment_method.startswith("pm_"):
        message = f"No such PaymentMethod: '{payment_method}'"
        return _error(400, message, code="resource_missing", param="payment_method")
    if _last(parameters, "confirm") != "true":
        return _error(400, "Only confirm=true is supported here.", param="confirm")
    return None


def _charge(
    state: _State, parameters: Parameters, *, processing: bool = False
) -> Response:
    """Create and store a PaymentIntent, returning the response Stripe would send."""
    payment_method = _last(parameters, "payment_method")
    amount = int(_last(parameters, "amount"))
    decline = DECLINES.get(payment_method)
    metadata = {}
    for name, values in parameters.items():
        if key := _METADATA_KEY.match(name):
            metadata[key.group(1)] = values[-1]
    intent: dict[str, Any] = {
        "id": _random_id("pi"),
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "capture_method": "automatic",
        "created": int(time.time()),
        "currency": _last(parameters, "currency").lower(),
        "customer": parameters.get("customer", [None])[-1],
        "description": parameters.get("description", [None])[-1],
        "last_payment_error": None,
        "latest_charge": _random_id("ch"),
        "livemode": False,
        "metadata": metadata,
        "payment_method": payment_method,
        "status": "succeeded",
    }
    if processing:
        intent.update(amount_received=0, status="processing")
    response: Response = (200, intent)
    if decline is not None:
        error: dict[str, Any] = {
            "type": "card_error",
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline.message,
            "charge": intent["latest_charge"],
            "payment_method": {"id": payment_method, "object": "payment_method"},
        }
        if decline.param is not None:
            error["param"] = decline.param
        # Stripe unsets the failed PaymentMethod and reports it in last_payment_error.
        intent.update(
            amount_received=0,
            last_payment_error=error,
            payment_method=None,
            status="requires_payment_method",
        )
        response = (402, {"error": {**error, "payment_intent": intent}})
    with state.lock:
        state.payment_intents[intent["id"]] = intent
    return response


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 closes each connection after its response, so stop() leaves no
    # kept-alive connection served by a handler thread.
    protocol_version = "HTTP/1.0"
    server_version = "vetqueue-stripe-test"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr lines. _send and _drop log instead."""

    def do_GET(self) -> None:
        self._read_body()
        state = self.server.state
        if self.path == "/_test/payment_intents":
            with state.lock:
                request_count = state.request_count
            succeeded = state.list_payment_intents(declined=False)
            declined = state.list_payment_intents(declined=True)
            body = {"data": succeeded, "declined": declined, "requests": request_count}
            self._send((200, body))
            return
        match = _PAYMENT_INTENT_PATH.match(self.path)
        if match is None:
            self._send(self._unrecognized_url())
            return

        state.sleep_latency()
        if self._api_key() is None:
            self._send(_unauthorized())
            return
        with state.lock:
            intent = copy.deepcopy(state.payment_intents.get(match.group(1)))
        if intent is None:
            message = f"No such payment_intent: '{match.group(1)}'"
            self._send(_error(404, message, code="resource_missing", param="intent"))
        else:
            self._send((200, intent))

    def do_DELETE(self) -> None:
        self._read_body()
        if self.path == "/_test/faults":
            self._send((200, {"cleared": self.server.state.clear_faults()}))
        else:
            self._send(self._unrecognized_url())

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path == "/v1/payment_intents":
            self._create_payment_intent(body)
            return
        state = self.server.state
        try:
            request = json.loads(body or b"{}")
            if self.path == "/_test/faults":
                self._send((200, {"queued": state.add_faults(request["faults"])}))
            elif self.path == "/_test/config":
                state.set_latency(request["latency_ms"])
                self._send((200, {"latency_ms": request["latency_ms"]}))
            elif self.path == "/_test/reset":
                state.reset()
                self._send((200, {}))
            else:
                self._send(self._unrecognized_url())
        except KeyError as error:
            self._reject_control_request(f"missing field {error}")
        except (ValueError, TypeError) as error:
            self._reject_control_request(str(error))

    def _reject_control_request(self, reason: str) -> None:
        logger.warning("invalid test control request %s: %s", self.path, reason)
        self._send(_error(400, f"Invalid test control request: {reason}"))

    def _create_payment_intent(self, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            state.request_count += 1
            state.active_requests += 1
            state.max_active_requests = max(
                state.max_active_requests, state.active_requests
            )
        try:
            self._handle_payment_intent(body)
        finally:
            with state.lock:
                state.active_requests -= 1

    def _handle_payment_intent(self, body: bytes) -> None:
        state = self.server.state
        parameters = parse_qs(body.decode(errors="replace"), keep_blank_values=True)
        key = self.headers.get("Idempotency-Key")
        fault = state.take_fault(
            payment_method=_last(parameters, "payment_method"), key=key
        )
        if fault is not None:
            logger.debug("applying %s to request %s", fault, self._request_id)
        if fault is not None and fault.kind == "drop_before":
            self._drop()
            return
        if fault is not None and fault.kind == "status":
            self._send(_fault_error(fault.status))
            return

        state.sleep_latency()
        api_key = self._api_key()
        headers: dict[str, str] | None = None
        if api_key is None:
            response = _unauthorized()
        elif (invalid := _validate(parameters)) is not None:
            response = invalid
        elif key is None:
            self._charge_and_send(parameters, fault=fault, scoped_key=None)
            return
        else:
            scoped_key = (api_key, key)
            with state.lock:
                saved = state.saved.get(scoped_key)
                in_use = saved is None and scoped_key in state.in_flight
                if saved is None and not in_use:
                    state.in_flight.add(scoped_key)
            if saved is None and not in_use:
                self._charge_and_send(parameters, fault=fault, scoped_key=scoped_key)
                return
            response, headers = _idempotent_response(key, saved, parameters)

        # A request that charges sleeps in _charge_and_send, with its key reserved.
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        self._send_or_drop(response, fault=fault, headers=headers)

    def _charge_and_send(
        self,
        parameters: Parameters,
        *,
        fault: _Fault | None,
        scoped_key: tuple[str, str] | None,
    ) -> None:
        state = self.server.state
        try:
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
            processing = fault is not None and fault.kind == "processing"
            response = _charge(state, parameters, processing=processing)
            if scoped_key is not None:
                saved = _SavedResponse(
                    _normalize(parameters), *response, self._request_id
                )
                with state.lock:
                    state.saved[scoped_key] = saved
        finally:
            if scoped_key is not None:
                with state.lock:
                    state.in_flight.discard(scoped_key)
        self._send_or_drop(response, fault=fault)

    def _send_or_drop(
        self,
        response: Response,
        *,
        fault: _Fault | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if fault is not None and fault.kind == "drop_after_charge":
            self._drop()
        else:
            self._send(response, headers=headers)

    def _api_key(self) -> str | None:
        """Return the request's test API key, or None if it is missing or invalid."""
        scheme, _, api_key = self.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and api_key.startswith("sk_test_"):
            return api_key
        return None

    def _read_body(self) -> bytes:
        self._request_id = _random_id("req")
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _unrecognized_url(self) -> Response:
        return _error(404, f"Unrecognized request URL ({self.command}: {self.path}).")

    def _send(
        self, response: Response, *, headers: dict[str, str] | None = None
    ) -> None:
        status, body = response
        payload = json.dumps(body).encode()
        logger.debug("%s %s %d %s", self.command, self.path, status, self._request_id)
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
            "Request-Id": self._request_id,
            **(headers or {}),
        }
        if key := self.headers.get("Idempotency-Key"):
            headers["Idempotency-Key"] = key
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError as error:
            # A client that timed out during a delay fault has closed the socket.
            logger.debug("response %s not sent: %s", self._request_id, error)

    def _drop(self) -> None:
        logger.debug("%s %s dropped %s", self.command, self.path, self._request_id)
        # Returning without a response makes the server close the socket.
        self.close_connection = True


def _normalize(parameters: Parameters) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((name, tuple(values)) for name, values in parameters.items()))


def _unauthorized() -> Response:
    message = (
        "Missing or invalid API key. Send a test secret key in the Authorization "
        "header, using Bearer auth (e.g. 'Authorization: Bearer sk_test_...')."
    )
    return _error(401, message)


def _idempotent_response(
    key: str, saved: _SavedResponse | None, parameters: Parameters
) -> tuple[Response, dict[str, str] | None]:
    """Return the response to a key that is in flight (saved is None) or saved."""
    if saved is None:
        message = (
            "There is currently another in-progress request using this "
            f"idempotency key: '{key}'. Try again later."
        )
        return _error(409, message, code="idempotency_key_in_use"), None
    if saved.parameters != _normalize(parameters):
        message = (
            "Keys for idempotent requests can only be used with the same "
            f"parameters they were first used with. Try using a key other than "
            f"'{key}' if you meant to execute a different request."
        )
        return _error(400, message, type="idempotency_error"), None
    headers = {"Idempotent-Replayed": "true", "Original-Request": saved.request_id}
    return (saved.status, saved.body), headers


def _fault_error(status: int) -> Response:
    if status == 429:
        message = "Too many requests hit the API too quickly."
        return _error(429, message, code="rate_limit")
    return _error(status, "An unknown error occurred.", type="api_error")


class _KeepAliveHandler(_Handler):
    # Every response carries Content-Length, so HTTP/1.1 can keep the
    # connection open for the client's next request. The body is written after
    # the headers, and without TCP_NODELAY it would wait for the client's
    # delayed ACK of them (about 40 ms) on a kept-alive connection.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog of 5 overflows when 50 clients connect
    # at once.
    request_queue_size = 128

    def __init__(self, port: int, *, keep_alive: bool = False) -> None:
        super().__init__((HOST, port), _KeepAliveHandler if keep_alive else _Handler)
        self.state = _State()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # These are mostly clients that closed the connection mid-request, which
        # socketserver's default handler would print to stderr as a traceback.
        logger.debug("error serving %s", client_address, exc_info=True)


class StripeTestServer:
    """Stripe test server on 127.0.0.1, served by a daemon thread of this process."""

    def __init__(self, *, port: int = 0, keep_alive: bool = False) -> None:
        self._port = port
        self._keep_alive = keep_alive
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind the port and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"StripeTestServer is already running on {self.url}")
        self._server = _Server(self._port, keep_alive=self._keep_alive)
        # A short poll interval lets stop() return within about 50 ms.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-test-server",
            daemon=True,
        )
        self._thread.start()
        logger.info("Stripe test server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port. Requests still running may finish."""
        if self._server is None or self._thread is None:
            return
        url = self.url
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None
        self._thread = None
        logger.info("Stripe test server on %s stopped", url)

    @property
    def url(self) -> str:
        """Base URL, for ``StripeClient(base_addresses={"api": url})``."""
        return f"http://{HOST}:{self._state_owner().server_address[1]}"

    def add_faults(self, faults: list[dict[str, Any]]) -> None:
        """Queue faults in the JSON form of ``POST /_test/faults``.

        Raises ValueError for an invalid fault, before any is queued.
        """
        self._state_owner().state.add_faults(faults)

    def clear_faults(self) -> None:
        self._state_owner().state.clear_faults()

    def set_latency(self, *, latency_ms: float) -> None:
        """Delay every payment_intents request by ``latency_ms`` milliseconds."""
        self._state_owner().state.set_latency(latency_ms)

    def reset(self) -> None:
        """Clear PaymentIntents, saved responses, faults, latency and counts."""
        self._state_owner().state.reset()

    def payment_intents(self) -> list[dict[str, Any]]:
        """Return copies of the succeeded PaymentIntents, oldest first."""
        return self._state_owner().state.list_payment_intents(declined=False)

    def declined_payment_intents(self) -> list[dict[str, Any]]:
        """Return copies of the PaymentIntents that did not succeed, oldest first."""
        return self._state_owner().state.list_payment_intents(declined=True)

    @property
    def request_count(self) -> int:
        """Number of ``POST /v1/payment_intents`` requests received."""
        state = self._state_owner().state
        with state.lock:
            return state.request_count

    @property
    def max_concurrent_requests(self) -> int:
        """Most ``POST /v1/payment_intents`` requests handled at the same time."""
        state = self._state_owner().state
        with state.lock:
            return state.max_active_requests

    def _state_owner(self) -> _Server:
        if self._server is None:
            raise RuntimeError("StripeTestServer is not running; call start() first")
        return self._server

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m devservers.stripe_server",
        description="Run vetqueue's Stripe test server on 127.0.0.1.",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port, 0 for any free port (default 0)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of the log on stderr; DEBUG logs every request",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )

    stop_requested = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop_requested.set())
    server = StripeTestServer(port=args.port).start()
    print(server.url, flush=True)
    # A bounded wait returns to the interpreter, which then runs the signal handlers.
    while not stop_requested.wait(timeout=0.5):
        pass
    server.stop()


if __name__ == "__main__":
    main()
