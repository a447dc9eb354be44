"""The registry API: register, list, read, change, lifecycle, through real HTTP."""

import pytest

from agents.models import Agent, AgentStatus
from audit.models import AuditEvent


def register(client, **overrides):
    body = {
        "name": "scout",
        "description": "Finds papers",
        "owner": "admin-user",
        "team": "research",
        "roles": ["researcher"],
        "allowed_models": ["gpt-4o-mini"],
        "allowed_tools": ["web-search"],
        "clearance": "confidential",
    }
    body.update(overrides)
    return client.post("/api/v1/agents/", body, format="json")


def test_an_admin_registers_an_agent_and_gets_201_with_its_id(api_for, team, roles):
    response = register(api_for("admin"))
    assert response.status_code == 201, response.json()
    agent = Agent.objects.get(pk=response.json()["id"])
    assert agent.name == "scout"
    assert agent.status == AgentStatus.ACTIVE
    assert agent.owner.username == "admin-user"
    assert agent.clearance == 2
    assert [g.role.name for g in agent.role_grants.all()] == ["researcher"]
    assert response.json()["roles"] == ["researcher"]
    event = AuditEvent.objects.get(action="agent.register", agent_id=agent.pk)
    assert event.actor_name == "admin-user"


def test_registration_can_leave_the_agent_pending_until_activated(api_for, team, roles):
    client = api_for("admin")
    agent_id = register(client, activate=False).json()["id"]
    assert Agent.objects.get(pk=agent_id).status == "pending"
    response = client.post(f"/api/v1/agents/{agent_id}/activate/")
    assert response.status_code == 200
    assert Agent.objects.get(pk=agent_id).status == "active"


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"name": "Not A Slug!"}, "name"),
        ({"owner": "nobody"}, "owner"),
        ({"team": "no-such-team"}, "team"),
        ({"roles": ["no-such-role"]}, "roles"),
        ({"clearance": "top-secret"}, "clearance"),
        ({"allowed_models": "gpt-4o"}, "allowed_models"),
        ({"allowed_models": ["x" * 101]}, "allowed_models"),
    ],
)
def test_bad_registrations_get_a_field_level_problem_and_change_nothing(api_for, team, roles, overrides, field):
    response = register(api_for("admin"), **overrides)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"]
    assert not Agent.objects.exists()


def test_a_duplicate_name_is_refused(api_for, team, roles):
    client = api_for("admin")
    assert register(client).status_code == 201
    response = register(client)
    assert response.status_code == 400
    assert "already exists" in response.json()["errors"]["name"][0]
    assert Agent.objects.count() == 1


def test_malformed_json_is_a_400_problem(api_for, team):
    response = api_for("admin").post("/api/v1/agents/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert not Agent.objects.exists()


def test_an_oversized_body_is_a_413_problem(api_for, team):
    response = register(api_for("admin"), description="x" * 70_000)
    assert response.status_code == 413
    assert response["Content-Type"] == "application/problem+json"
    assert not Agent.objects.exists()


def test_a_non_json_body_is_415(api_for, team):
    response = api_for("admin").post("/api/v1/agents/", "name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert not Agent.objects.exists()


def test_the_list_filters_and_paginates(api_for, make_agent, personas, roles):
    make_agent("alpha", role_names=["llm-user"])
    beta = make_agent("beta")
    make_agent("gamma", description="reads invoices")
    from agents import services

    services.agent_suspend(agent=beta, by=personas["admin"], reason="test")
    client = api_for("viewer")
    names = lambda r: [a["name"] for a in r.json()["results"]]  # noqa: E731
    assert names(client.get("/api/v1/agents/")) == ["alpha", "beta", "gamma"]
    assert names(client.get("/api/v1/agents/?status=suspended")) == ["beta"]
    assert names(client.get("/api/v1/agents/?role=llm-user")) == ["alpha"]
    assert names(client.get("/api/v1/agents/?q=invoice")) == ["gamma"]
    assert names(client.get("/api/v1/agents/?team=research&owner=admin-user")) == ["alpha", "beta", "gamma"]
    page = client.get("/api/v1/agents/?limit=2&offset=1").json()
    assert page["count"] == 3 and [a["name"] for a in page["results"]] == ["beta", "gamma"]
    bad = client.get("/api/v1/agents/?status=sleeping")
    assert bad.status_code == 400 and "status" in bad.json()["errors"]


def test_patch_changes_fields_but_never_the_status(api_for, make_agent):
    agent = make_agent()
    client = api_for("admin")
    response = client.patch(f"/api/v1/agents/{agent.pk}/", {"description": "new", "clearance": "restricted"}, format="json")
    assert response.status_code == 200
    agent.refresh_from_db()
    assert (agent.description, agent.clearance) == ("new", 3)
    response = client.patch(f"/api/v1/agents/{agent.pk}/", {"status": "retired"}, format="json")
    assert response.status_code == 400
    assert "suspend/resume/retire" in response.json()["errors"]["status"][0]
    agent.refresh_from_db()
    assert agent.status == "active"
    assert AuditEvent.objects.filter(action="agent.update", agent_id=agent.pk).count() == 1


def test_suspend_needs_a_reason_which_is_recorded(api_for, make_agent):
    agent = make_agent()
    client = api_for("security")
    response = client.post(f"/api/v1/agents/{agent.pk}/suspend/", {}, format="json")
    assert response.status_code == 400 and "reason" in response.json()["errors"]
    agent.refresh_from_db()
    assert agent.status == "active"
    response = client.post(f"/api/v1/agents/{agent.pk}/suspend/", {"reason": "leaking data"}, format="json")
    assert response.status_code == 200
    agent.refresh_from_db()
    assert (agent.status, agent.status_reason, agent.status_changed_by.username) == ("suspended", "leaking data", "security-user")
    event = AuditEvent.objects.get(action="agent.suspend", agent_id=agent.pk)
    assert event.reasons == ["leaking data"] and event.actor_name == "security-user"


def test_invalid_transitions_are_409_and_change_nothing(api_for, make_agent):
    agent = make_agent()
    client = api_for("admin")
    assert client.post(f"/api/v1/agents/{agent.pk}/resume/").status_code == 409  # not suspended
    assert client.post(f"/api/v1/agents/{agent.pk}/retire/", {"reason": "done"}, format="json").status_code == 200
    for verb, body in (("resume", {}), ("suspend", {"reason": "x"}), ("activate", {}), ("retire", {"reason": "again"})):
        response = client.post(f"/api/v1/agents/{agent.pk}/{verb}/", body, format="json")
        assert response.status_code == 409, verb
        assert response["Content-Type"] == "application/problem+json"
    agent.refresh_from_db()
    assert agent.status == "retired" and agent.status_reason == "done"
    response = client.patch(f"/api/v1/agents/{agent.pk}/", {"description": "zombie"}, format="json")
    assert response.status_code == 409


def test_retiring_keeps_history_and_revokes_keys(api_for, make_agent, agent_client):
    agent = make_agent()
    bot = agent_client(agent)
    admin = api_for("admin")
    assert admin.post(f"/api/v1/agents/{agent.pk}/retire/", {"reason": "replaced"}, format="json").status_code == 200
    assert Agent.objects.filter(pk=agent.pk).exists()
    assert bot.get("/api/v1/agents/me/").status_code == 401
    assert admin.post(f"/api/v1/agents/{agent.pk}/keys/", {}, format="json").status_code == 409


def test_unknown_agents_are_404_for_people_who_may_see_agents(api_for, db):
    client = api_for("viewer")
    response = client.get("/api/v1/agents/00000000-0000-0000-0000-000000000000/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
