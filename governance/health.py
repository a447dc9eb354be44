"""Readiness probes: can this process reach PostgreSQL and Redis right now?"""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connections


def probe_database(alias: str = "default") -> str | None:
    """None when the database answers, else a short reason."""
    connection = connections[alias]
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        try:
            connection.close()
        except Exception:
            pass
        return f"{type(exc).__name__}"
    return None


def probe_redis(url: str | None = None) -> str | None:
    timeout = settings.WARDEN_READINESS_TIMEOUT
    client = redis.Redis.from_url(url or settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}"
    finally:
        client.close()
    return None


def readiness() -> dict[str, str]:
    checks = {"database": probe_database(), "redis": probe_redis()}
    return {name: ("ok" if reason is None else f"unavailable: {reason}") for name, reason in checks.items()}
