"""The registry pages: list, register, detail, keys, kill switch, delegation, teams."""

import pytest

from agents.models import Agent, AgentKey, Delegation, Team
from audit.models import AuditEvent


def test_the_list_shows_agents_and_filters_with_htmx(client_for, make_agent):
    make_agent("alpha", description="reads mail")
    make_agent("beta")
    client = client_for("viewer")
    page = client.get("/agents/")
    assert b"alpha" in page.content and b"beta" in page.content
    assert b"Register agent" not in page.content  # viewers cannot register
    fragment = client.get("/agents/?q=mail", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content and b"alpha" in fragment.content and b"beta" not in fragment.content
    assert "HX-Request" in fragment["Vary"]


def test_a_bad_filter_shows_an_error_not_a_500(client_for, make_agent):
    response = client_for("viewer").get("/agents/?status=sleeping&team=" + "x" * 300)
    assert response.status_code == 200
    assert b"role=\"alert\"" in response.content


def test_an_admin_registers_an_agent_in_the_browser_form(client_for, personas, team, roles):
    response = client_for("admin").post("/agents/new/", {
        "name": "mailer", "description": "sends mail", "owner": personas["admin"].pk, "team": team.pk,
        "roles": ["researcher"], "allowed_models": "gpt-4o-mini, claude-haiku", "allowed_tools": "",
        "clearance": "1", "activate": "on",
    })
    agent = Agent.objects.get(name="mailer")
    assert response.status_code == 302 and response["Location"] == f"/agents/{agent.pk}/"
    assert agent.allowed_models == ["gpt-4o-mini", "claude-haiku"]
    assert agent.status == "active"


def test_the_register_form_shows_errors_and_creates_nothing(client_for, personas, team, make_agent):
    make_agent("taken")
    response = client_for("admin").post("/agents/new/", {"name": "taken", "owner": personas["admin"].pk, "team": team.pk, "clearance": "1"})
    assert response.status_code == 400
    assert b"already exists" in response.content
    response = client_for("admin").post("/agents/new/", {"name": "Bad Name", "owner": "999999", "clearance": "9"})
    assert response.status_code == 400
    assert response.content.count(b'class="errorlist') >= 3
    assert Agent.objects.count() == 1


@pytest.mark.parametrize("persona", ["finance", "security", "viewer"])
def test_only_admins_may_open_the_register_form(client_for, persona, team):
    assert client_for(persona).get("/agents/new/").status_code == 403
    assert client_for(persona).post("/agents/new/", {"name": "x"}).status_code == 403
    assert not Agent.objects.exists()


def test_issuing_a_key_shows_the_secret_once(client_for, make_agent):
    agent = make_agent()
    client = client_for("admin")
    response = client.post(f"/agents/{agent.pk}/keys/", {"name": "laptop"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    key = AgentKey.objects.get(agent=agent)
    html = response.content.decode()
    start = html.index("wdn_agent_" + key.lookup + "_")
    secret = html[start:start + 59]
    from governance.credentials import matches

    assert matches(secret, key.digest)
    again = client.get(f"/agents/{agent.pk}/").content.decode()
    assert secret not in again and key.display_prefix in again


def test_a_bad_key_expiry_is_a_form_error(client_for, make_agent):
    agent = make_agent()
    response = client_for("admin").post(f"/agents/{agent.pk}/keys/", {"expires_in_days": "-3"})
    assert response.status_code == 400
    assert not AgentKey.objects.exists()


def test_security_suspends_with_a_reason_and_it_is_recorded(client_for, make_agent):
    agent = make_agent()
    client = client_for("security")
    page = client.get(f"/agents/{agent.pk}/").content.decode()
    assert "Suspend agent" in page and "Retire" not in page and "Issue key" not in page
    refused = client.post(f"/agents/{agent.pk}/suspend/", {"reason": "  ", "dialog": "suspend"})
    assert refused.status_code == 400 and b"Say why" in refused.content
    agent.refresh_from_db()
    assert agent.status == "active"
    response = client.post(f"/agents/{agent.pk}/suspend/", {"reason": "prompt injection seen"})
    assert response.status_code == 302
    agent.refresh_from_db()
    assert (agent.status, agent.status_reason) == ("suspended", "prompt injection seen")
    assert AuditEvent.objects.filter(action="agent.suspend", actor_name="security-user").exists()
    # security may suspend, not resume
    assert client.post(f"/agents/{agent.pk}/resume/").status_code == 403


def test_resume_of_a_retired_agent_shows_a_conflict(client_for, make_agent, personas):
    from agents import services

    agent = make_agent()
    services.agent_retire(agent=agent, by=personas["admin"], reason="done")
    response = client_for("admin").post(f"/agents/{agent.pk}/resume/")
    assert response.status_code == 409
    assert b"cannot be" in response.content or b"Only a suspended" in response.content
    agent.refresh_from_db()
    assert agent.status == "retired"


def test_lifecycle_urls_refuse_get(client_for, make_agent):
    agent = make_agent()
    assert client_for("admin").get(f"/agents/{agent.pk}/suspend/").status_code == 405


def test_an_admin_delegates_and_revokes_in_the_browser(client_for, make_agent):
    agent = make_agent()
    client = client_for("admin")
    bad = client.post(f"/agents/{agent.pk}/delegations/", {"expires_in_hours": "0", "max_depth": "2"})
    assert bad.status_code == 400 and not Delegation.objects.exists()
    ok = client.post(f"/agents/{agent.pk}/delegations/", {"scopes": ["llm.call"], "expires_in_hours": "4", "max_depth": "2"})
    assert ok.status_code == 302
    delegation = Delegation.objects.get()
    assert client.post(f"/agents/delegations/{delegation.pk}/revoke/", {"reason": "done"}).status_code == 302
    delegation.refresh_from_db()
    assert delegation.revoked_at is not None


def test_unknown_agent_pages_are_404(client_for, db):
    assert client_for("admin").get("/agents/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_teams_are_listed_for_all_and_created_by_admins(client_for, team):
    assert b"Research" in client_for("viewer").get("/agents/teams/").content
    assert client_for("viewer").post("/agents/teams/", {"name": "ops"}).status_code == 403
    assert client_for("admin").post("/agents/teams/", {"name": "ops", "display_name": "Ops"}).status_code == 302
    assert client_for("admin").post("/agents/teams/", {"name": "ops"}).status_code == 400
    assert Team.objects.filter(name="ops").count() == 1


def test_people_manage_their_own_api_tokens(client_for, personas):
    from governance.models import ApiToken

    client = client_for("viewer")
    response = client.post("/account/tokens/", {"name": "nightly", "expires_in_days": "30"})
    token = ApiToken.objects.get(user=personas["viewer"])
    assert f"wdn_user_{token.lookup}_" in response.content.decode()
    assert client.post("/account/tokens/", {"name": ""}).status_code == 400
    # someone else's token cannot be revoked from here
    other = client_for("admin")
    assert other.post("/account/tokens/", {"revoke": str(token.pk)}).status_code == 404
    client.post("/account/tokens/", {"revoke": str(token.pk)})
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_seed_demo_is_safe_to_run_twice(db, settings, capsys):
    from django.core.management import call_command

    settings.WARDEN_DEMO_PASSWORD = "demo-pass-123"
    settings.WARDEN_DEMO_MCP_URL = "http://127.0.0.1:8000/demo/mcp/"
    call_command("seed_demo")
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "Demo fleet: 9 agents (0 new)" in out
    assert Agent.objects.count() == 9
    from agents.models import McpServer, McpTool

    assert McpServer.objects.get().name == "crm" and McpTool.objects.count() == 3
    from django.contrib.auth import get_user_model

    for name in ("admin", "finance", "security", "viewer"):
        user = get_user_model().objects.get(username=name)
        assert user.check_password("demo-pass-123")
        assert list(user.groups.values_list("name", flat=True)) == [name]


def test_create_api_token_prints_a_working_token(personas, capsys):
    from django.core.management import CommandError, call_command
    from rest_framework.test import APIClient

    call_command("create_api_token", "admin-user", "--expires-in-days", "7")
    secret = capsys.readouterr().out.strip()
    assert APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {secret}").json()["username"] == "admin-user"
    with pytest.raises(CommandError, match="no user"):
        call_command("create_api_token", "ghost")
    with pytest.raises(CommandError, match="between"):
        call_command("create_api_token", "admin-user", "--expires-in-days", "0")
