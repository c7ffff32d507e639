"""The Stripe client, configured with explicit timeouts and no hidden retries."""

from __future__ import annotations

import functools

import stripe

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
        timeout=(settings.stripe_connect_timeout_s, settings.stripe_read_timeout_s)
    )
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base},
        http_client=http_client,
        max_network_retries=0,
    )
