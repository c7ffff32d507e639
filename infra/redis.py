"""The Redis clients of the broker, the rate limiters and health checks."""

from __future__ import annotations

import functools

import redis

from infra.settings import get_settings


def connect(url: str) -> redis.Redis:
    """Return a Redis client whose connects and replies time out.

    Without a socket timeout, a Redis server that stops replying without
    closing the connection would block the caller forever, be it an API
    request after its commit or a worker thread.
    """
    timeout_s = get_settings().redis_timeout_s
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
    )


@functools.cache
def get_redis() -> redis.Redis:
    """Return the process's Redis client, created on first use from the settings."""
    return connect(get_settings().redis_url)
