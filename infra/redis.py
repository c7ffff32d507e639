"""The Redis client shared by the broker, the rate limiters and health checks."""

from __future__ import annotations

import functools

import redis

from infra.settings import get_settings


@functools.cache
def get_redis() -> redis.Redis:
    """Return the process's Redis client, created on first use from the settings."""
    return redis.Redis.from_url(
        get_settings().redis_url,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
    )
