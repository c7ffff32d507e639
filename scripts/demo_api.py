"""A small JSON client of the vetqueue API, as a web client would call it."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from scripts.demo_setup import DemoError

TIMEOUT_S = 15.0
PAGE_LIMIT = 100


class ApiClient:
    """Sends JSON requests with a bearer key and raises DemoError on failure."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """Send a request and return the status and the decoded JSON body.

        Any HTTP status is returned. Raises DemoError when the connection
        fails or times out, or the body is not JSON.
        """
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(
                {name: value for name, value in query.items() if value is not None}
            )
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise DemoError(f"{method} {url} failed: {error}") from error
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            raise DemoError(
                f"{method} {path} returned HTTP {status} with a body that is not "
                f"JSON: {raw[:300]!r}"
            ) from None

    def call(
        self,
        method: str,
        path: str,
        *,
        expected: tuple[int, ...] = (200,),
        **options: Any,
    ) -> tuple[int, Any]:
        """Send a request and raise DemoError unless the status is in ``expected``."""
        status, payload = self.request(method, path, **options)
        if status not in expected:
            raise DemoError(
                f"{method} {path} returned HTTP {status}, expected "
                f"{' or '.join(map(str, expected))}: {json.dumps(payload)[:500]}"
            )
        return status, payload

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query)[1]

    def list_all(self, path: str, **query: Any) -> list[dict[str, Any]]:
        """Return every item of a paginated list, following ``next_cursor``."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.get(path, limit=PAGE_LIMIT, cursor=cursor, **query)
            items.extend(page["data"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items
