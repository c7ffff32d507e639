"""The Stripe client, configured with explicit timeouts and no hidden retries."""

from __future__ import annotations

import functools

import requests
import stripe
from requests.adapters import HTTPAdapter

from infra.settings import get_settings


@functools.cache
def get_stripe() -> stripe.StripeClient:
    """Return the process's Stripe client.

    The SDK's own network retries are off (``max_network_retries=0``) because
    the charging code retries with its own backoff and time budget, and always
    with the same idempotency key.
    """
    settings = get_settings()
    http_client = stripe.RequestsClient(
        timeout=(settings.stripe_connect_timeout_s, settings.stripe_read_timeout_s),
        session=_session(),
        proxy=settings.stripe_proxy_url,
    )
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base},
        http_client=http_client,
        max_network_retries=0,
    )


# Worker threads share one session, and its connection pool keeps this many
# connections to Stripe open for reuse.
POOL_CONNECTIONS = 64


def _session() -> requests.Session:
    """Return a session that does not read proxy settings from the environment.

    With ``trust_env`` on, requests scans every environment variable on each
    request to find proxy settings, which cost more CPU per charge than
    sending it. ``STRIPE_PROXY_URL`` sets a proxy explicitly instead.
    """
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_CONNECTIONS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
