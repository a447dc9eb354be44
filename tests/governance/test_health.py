import pytest
from django.db import connection


def test_healthz_says_the_process_is_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ready_when_database_and_redis_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_closed_when_the_database_is_down(client):
    # Point the real connection at a port where no PostgreSQL listens.
    original = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(unused_port())
    try:
        response = client.get("/readyz")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = original
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("unavailable")
    assert body["checks"]["redis"] == "ok"
    # and the database is back for everyone else
    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
def test_readyz_fails_closed_when_redis_is_down(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{unused_port()}/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("unavailable")
    assert response.json()["checks"]["database"] == "ok"
