"""Every registry endpoint x every persona, agent keys and no credential."""

import pytest

from agents.models import Agent

PERSONAS = ("admin", "finance", "security", "viewer", "outsider")

# (method, path template, allowed personas, success status)
MATRIX = [
    ("get", "/api/v1/agents/", {"admin", "finance", "security", "viewer"}, 200),
    ("post", "/api/v1/agents/", {"admin"}, 201),
    ("get", "/api/v1/agents/{agent}/", {"admin", "finance", "security", "viewer"}, 200),
    ("patch", "/api/v1/agents/{agent}/", {"admin"}, 200),
    ("post", "/api/v1/agents/{agent}/suspend/", {"admin", "security"}, 200),
    ("post", "/api/v1/agents/{agent}/retire/", {"admin"}, 200),
    ("get", "/api/v1/agents/{agent}/keys/", {"admin", "finance", "security", "viewer"}, 200),
    ("post", "/api/v1/agents/{agent}/keys/", {"admin"}, 201),
    ("delete", "/api/v1/agents/{agent}/keys/{key}/", {"admin"}, 204),
    ("post", "/api/v1/agents/{agent}/keys/{key}/rotate/", {"admin"}, 201),
    ("get", "/api/v1/agents/{agent}/delegations/", {"admin", "finance", "security", "viewer"}, 200),
    ("post", "/api/v1/agents/{agent}/delegations/", {"admin"}, 201),
]

BODIES = {
    ("post", "/api/v1/agents/"): {"name": "newbie", "owner": "admin-user", "team": "research"},
    ("patch", "/api/v1/agents/{agent}/"): {"description": "changed"},
    ("post", "/api/v1/agents/{agent}/suspend/"): {"reason": "test"},
    ("post", "/api/v1/agents/{agent}/retire/"): {"reason": "test"},
    ("post", "/api/v1/agents/{agent}/delegations/"): {"scopes": ["llm.call"], "expires_in_hours": 1},
}


@pytest.fixture
def target(make_agent, personas):
    from agents import services

    agent = make_agent("target")
    key, _ = services.agent_key_issue(agent=agent, by=personas["admin"])
    return agent, key


def call(client, method, template, agent, key):
    path = template.format(agent=agent.pk, key=key.pk)
    return getattr(client, method)(path, BODIES.get((method, template), {}), format="json")


@pytest.mark.parametrize("method,template,allowed,ok", MATRIX)
@pytest.mark.parametrize("persona", PERSONAS)
def test_each_endpoint_allows_exactly_its_groups(api_for, target, persona, method, template, allowed, ok):
    agent, key = target
    before = Agent.objects.get(pk=agent.pk)
    response = call(api_for(persona), method, template, agent, key)
    if persona in allowed:
        assert response.status_code == ok, response.content
    else:
        assert response.status_code == 403, response.content
        assert response["Content-Type"] == "application/problem+json"
        after = Agent.objects.get(pk=agent.pk)
        assert (after.status, after.description, after.updated_at) == (before.status, before.description, before.updated_at)
        assert Agent.objects.count() == 1


@pytest.mark.parametrize("method,template,allowed,ok", MATRIX)
def test_agent_keys_cannot_use_the_human_endpoints(target, agent_client, method, template, allowed, ok):
    agent, key = target
    response = call(agent_client(agent), method, template, agent, key)
    assert response.status_code == 403
    assert Agent.objects.get(pk=agent.pk).status == "active"


@pytest.mark.parametrize("method,template,allowed,ok", MATRIX)
def test_no_credential_is_401_whether_or_not_the_agent_exists(client, target, method, template, allowed, ok):
    from rest_framework.test import APIClient

    agent, key = target
    real = call(APIClient(), method, template, agent, key)
    missing = call(APIClient(), method, template.replace("{agent}", "00000000-0000-0000-0000-000000000000"), agent, key)
    assert real.status_code == missing.status_code == 401
    assert real.json()["detail"] == missing.json()["detail"]
