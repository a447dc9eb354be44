"""Abuse limits: bad credentials and anonymous calls to the API, repeated failed sign-ins."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEvent
from tests.conftest import PASSWORD

BAD = "wdn_agent_AAAAAAAA_" + "B" * 40


@pytest.fixture(autouse=True)
def one_window(monkeypatch):
    """Counters are fixed windows: hold the clock inside one, or a run that crosses a minute starts afresh."""
    from governance.api.throttles import _Counted

    start = (time.time() // 60) * 60 + 1
    monkeypatch.setattr(_Counted, "timer", lambda self: start)


def client(address="127.0.0.1", **headers) -> APIClient:
    api = APIClient(REMOTE_ADDR=address, **headers)
    return api


def test_bad_credentials_are_throttled_per_address(api_for):
    attacker = client(HTTP_AUTHORIZATION=f"Bearer {BAD}")
    statuses = [attacker.get("/api/v1/me/").status_code for _ in range(20)]
    assert statuses == [401] * 20
    refused = attacker.get("/api/v1/me/")
    assert refused.status_code == 429 and refused["Content-Type"] == "application/problem+json"
    assert 0 < int(refused["Retry-After"]) <= 61
    # A forged X-Forwarded-For does not make it someone else ...
    forged = client(HTTP_AUTHORIZATION=f"Bearer {BAD}", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert forged.get("/api/v1/me/").status_code == 429
    # ... another address is unaffected, and a credential that checks out is never refused.
    assert client("10.9.8.7", HTTP_AUTHORIZATION=f"Bearer {BAD}").get("/api/v1/me/").status_code == 401
    assert api_for("admin").get("/api/v1/me/").status_code == 200


def test_behind_proxies_the_address_is_the_one_they_saw(db, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    behind = client("10.0.0.1", HTTP_AUTHORIZATION=f"Bearer {BAD}", HTTP_X_FORWARDED_FOR="spoofed, 198.51.100.7")
    assert [behind.get("/api/v1/me/").status_code for _ in range(21)][-1] == 429
    neighbour = client("10.0.0.1", HTTP_AUTHORIZATION=f"Bearer {BAD}", HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert neighbour.get("/api/v1/me/").status_code == 401  # same proxy, another client


def test_anonymous_calls_are_throttled(db):
    anonymous = client()
    statuses = [anonymous.get("/api/v1/agents/").status_code for _ in range(120)]
    assert set(statuses) == {401}
    assert anonymous.get("/api/v1/agents/").status_code == 429
    assert anonymous.get("/api/schema/").status_code == 429


def test_without_redis_the_limits_fail_closed(api_for, settings):
    valid = api_for("admin")
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:9/0",
                                   "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2}}}
    for anyone in (client(HTTP_AUTHORIZATION=f"Bearer {BAD}"), client()):
        response = anyone.get("/api/v1/me/")
        assert response.status_code == 503 and response["Content-Type"] == "application/problem+json"
        assert "Rate limits cannot be checked" in response.json()["detail"]
    assert valid.get("/api/v1/me/").status_code == 200  # a credential that checks out needs no counter


def sign_in(username: str, password: str):
    return Client(REMOTE_ADDR="127.0.0.1").post("/login/", {"username": username, "password": password})


def test_repeated_failed_sign_ins_lock_the_account_from_that_address(personas):
    typed = "Tr0ub4dor&3-wrong"
    assert [sign_in("admin-user", typed).status_code for _ in range(5)] == [200, 200, 200, 200, 429]
    locked = sign_in("admin-user", PASSWORD)  # even the right password, for now
    assert locked.status_code == 429
    assert b"Too many failed sign-ins for admin-user" in locked.content
    assert "_auth_user_id" not in locked.wsgi_request.session
    # Someone else signing in from the same address is not locked out by it.
    assert sign_in("viewer-user", PASSWORD).status_code == 302
    events = list(AuditEvent.objects.filter(action="auth.sign_in_failed").order_by("id"))
    assert [event.outcome for event in events] == ["denied"] * 4 + ["locked", "locked"]
    assert "too many failed sign-ins" in events[-1].reasons[0]
    # What was typed as a password is nowhere: not in the audit log, not in the lockout records.
    with connection.cursor() as cursor:
        for table in ("audit_auditevent", "axes_accessattempt", "axes_accessfailurelog"):
            cursor.execute(f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s", [f"%{typed}%"])
            assert cursor.fetchone()[0] == 0, table
        cursor.execute("SELECT count(*) FROM axes_accessattempt")
        assert cursor.fetchone()[0] >= 1
