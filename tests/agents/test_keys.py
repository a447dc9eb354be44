import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from agents import services
from agents.models import AgentKey
from audit.models import AuditEvent


def test_an_issued_key_is_shown_once_and_stored_only_as_a_hash(api_for, make_agent):
    agent = make_agent()
    response = api_for("admin").post(f"/api/v1/agents/{agent.pk}/keys/", {"name": "prod"}, format="json")
    assert response.status_code == 201
    secret = response.json()["secret"]
    assert secret.startswith("wdn_agent_") and len(secret) >= 58
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM agents_agentkey")
        rows = cursor.fetchall()
    assert rows and not any(secret in str(value) or secret[10:] in str(value) for row in rows for value in row)
    listing = api_for("admin").get(f"/api/v1/agents/{agent.pk}/keys/").json()
    assert "secret" not in listing[0]
    assert listing[0]["prefix"].startswith("wdn_agent_")
    event = AuditEvent.objects.get(action="agent.key.issue")
    assert secret not in str(event.payload)


def test_a_key_authenticates_its_agent_and_records_last_use(make_agent, agent_client):
    agent = make_agent()
    client = agent_client(agent)
    response = client.get("/api/v1/agents/me/")
    assert response.status_code == 200
    assert response.json()["name"] == agent.name
    assert AgentKey.objects.get(agent=agent).last_used_at is not None


def test_revocation_is_effective_on_the_very_next_request(api_for, make_agent, personas):
    agent = make_agent()
    key, secret = services.agent_key_issue(agent=agent, by=personas["admin"])
    from rest_framework.test import APIClient

    bot = APIClient()
    bot.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert bot.get("/api/v1/agents/me/").status_code == 200
    assert api_for("admin").delete(f"/api/v1/agents/{agent.pk}/keys/{key.pk}/").status_code == 204
    response = bot.get("/api/v1/agents/me/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    key.refresh_from_db()
    assert key.revoked_at is not None and key.revoked_by.username == "admin-user"
    # revoking again is harmless
    assert api_for("admin").delete(f"/api/v1/agents/{agent.pk}/keys/{key.pk}/").status_code == 204


def test_suspension_is_visible_to_the_agent_on_its_next_request(api_for, make_agent, agent_client):
    agent = make_agent()
    bot = agent_client(agent)
    assert bot.get("/api/v1/agents/me/").json()["status"] == "active"
    api_for("security").post(f"/api/v1/agents/{agent.pk}/suspend/", {"reason": "kill"}, format="json")
    assert bot.get("/api/v1/agents/me/").json()["status"] == "suspended"


def test_an_expired_key_is_refused(make_agent, personas):
    from rest_framework.test import APIClient

    agent = make_agent()
    key, secret = services.agent_key_issue(agent=agent, by=personas["admin"], expires_at=timezone.now() + dt.timedelta(hours=1))
    AgentKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    bot = APIClient()
    bot.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert bot.get("/api/v1/agents/me/").status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wdn_agent_garbled",
        "Bearer wdn_agent_AAAAAAAA_" + "B" * 40,
        "Bearer " + "x" * 5000,
        "Bearer ",
        "Bearer wdn_user_ZZZZZZZZ_" + "C" * 40,
    ],
)
def test_garbled_or_unknown_credentials_get_the_same_401(client, db, header):
    from rest_framework.test import APIClient

    response = APIClient().get("/api/v1/agents/me/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid, expired or revoked credential."


def test_a_key_with_a_right_lookup_but_wrong_secret_is_refused(make_agent, personas):
    from rest_framework.test import APIClient

    agent = make_agent()
    key, secret = services.agent_key_issue(agent=agent, by=personas["admin"])
    forged = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    response = APIClient().get("/api/v1/agents/me/", HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert response.status_code == 401


def test_a_key_of_another_agent_cannot_touch_this_agent(make_agent, agent_client):
    mine, other = make_agent("mine"), make_agent("other")
    bot = agent_client(mine)
    assert bot.get(f"/api/v1/agents/{other.pk}/keys/").status_code == 403
    assert bot.post(f"/api/v1/agents/{other.pk}/suspend/", {"reason": "x"}, format="json").status_code == 403


def test_rotation_issues_a_new_key_and_ends_the_old_one(api_for, make_agent, personas):
    from rest_framework.test import APIClient

    agent = make_agent()
    old, old_secret = services.agent_key_issue(agent=agent, by=personas["admin"])
    response = api_for("admin").post(f"/api/v1/agents/{agent.pk}/keys/{old.pk}/rotate/", {}, format="json")
    assert response.status_code == 201
    new_secret = response.json()["secret"]
    client = APIClient()
    assert client.get("/api/v1/agents/me/", HTTP_AUTHORIZATION=f"Bearer {old_secret}").status_code == 401
    assert client.get("/api/v1/agents/me/", HTTP_AUTHORIZATION=f"Bearer {new_secret}").status_code == 200
    old.refresh_from_db()
    assert old.revoked_at is not None


def test_rotation_with_grace_keeps_the_old_key_until_the_grace_ends(api_for, make_agent, personas):
    agent = make_agent()
    old, _ = services.agent_key_issue(agent=agent, by=personas["admin"])
    response = api_for("admin").post(f"/api/v1/agents/{agent.pk}/keys/{old.pk}/rotate/", {"grace_seconds": 600}, format="json")
    assert response.status_code == 201
    old.refresh_from_db()
    assert old.revoked_at is None
    assert timezone.now() + dt.timedelta(seconds=590) < old.expires_at <= timezone.now() + dt.timedelta(seconds=600)


@pytest.mark.parametrize("body", [{"expires_at": "2001-01-01T00:00:00Z"}, {"expires_in_days": 0}, {"expires_at": "soon"}])
def test_bad_key_expiries_are_refused(api_for, make_agent, body):
    agent = make_agent()
    response = api_for("admin").post(f"/api/v1/agents/{agent.pk}/keys/", body, format="json")
    assert response.status_code == 400
    assert not AgentKey.objects.filter(agent=agent).exists()


def test_human_api_tokens_are_hashed_revocable_and_expire(personas):
    from rest_framework.test import APIClient

    from governance.models import ApiToken
    from governance.services import api_token_issue, api_token_revoke

    token, secret = api_token_issue(user=personas["viewer"], name="script")
    assert secret.startswith("wdn_user_")
    assert not ApiToken.objects.filter(digest__contains=secret[9:]).exists()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/me/").json()["username"] == "viewer-user"
    api_token_revoke(token=token, by=personas["viewer"])
    assert client.get("/api/v1/me/").status_code == 401
    token2, secret2 = api_token_issue(user=personas["viewer"], name="short", expires_at=timezone.now() + dt.timedelta(minutes=1))
    ApiToken.objects.filter(pk=token2.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {secret2}").status_code == 401


def test_a_deactivated_users_token_stops_working(personas):
    from rest_framework.test import APIClient

    from governance.services import api_token_issue

    _, secret = api_token_issue(user=personas["admin"], name="ci")
    personas["admin"].is_active = False
    personas["admin"].save()
    assert APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
