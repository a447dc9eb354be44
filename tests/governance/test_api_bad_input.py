"""Bad input anywhere in the API: a 4xx problem+json, never a 500.

Every operation of the OpenAPI schema, called by a credential it accepts, with every
field of its request body (and every query parameter) set to values a JSON reader,
PostgreSQL or a calendar cannot take, and with bodies that are not the right JSON at all.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from django.utils import timezone

NASTY_VALUES = [
    "a\u0000b", "\ud800", 2**70, -(2**70), -1, 1e308, 0.5, True, None, "", "x" * 5000, {"$": ["x"]},
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], "0001-01-01T00:00:00Z",
]
NASTY_BODIES = ["", "null", "[]", '"text"', "{", '{"a": NaN}', '{"a": "\\u0000"}', "[" * 5000 + "]" * 5000]
NASTY_QUERY = ["%00", "'", "0001-01", "9999-12", "-1", "x" * 3000, "２０２６-11", "2026-11-31T25:61:00"]

# Which credential exercises each part of the API past its permission check.
ACTOR_BY_PREFIX = [
    ("/api/v1/actions/", "agent"), ("/api/v1/delegations/", "agent"), ("/api/v1/agents/me/", "agent"),
    ("/api/v1/data-views/{name}/read/", "agent"),
    ("/api/v1/budgets/", "finance"), ("/api/v1/prices/", "finance"), ("/api/v1/spend/", "finance"),
    ("/api/v1/notifications/", "finance"), ("/api/v1/audit/", "security"), ("/api/v1/", "admin"),
]


@pytest.fixture
def world(bot, policy, personas, data_views, api_for):
    """One of everything a path can name, so requests get past the 404 to the validation."""
    from agents.models import AgentKey, AgentRun
    from agents.services import delegation_create
    from billing.services import budget_create
    from governance.models import RoleGrant
    from tests.conftest import ask

    policy("all", "permit(principal, action, resource);")
    agent = bot.agent
    budget = budget_create(scope="team", team=agent.team, monthly_limit_micros=10**9, by=personas["finance"])
    delegation = delegation_create(delegate=agent, by_user=personas["admin"], scopes=["llm.call"],
                                   expires_at=timezone.now() + dt.timedelta(hours=1))
    action_id = ask(bot).json()["id"]
    policy("held", '@escalate("admin")\nforbid(principal, action, resource == Model::"gpt-4o");')
    approval_id = ask(bot, resource="gpt-4o").json()["approval"]["id"]
    # A run made directly: these requests are about the API's input, not about a worker taking the run up.
    run = AgentRun.objects.create(agent=agent, program="tests.runtime.programs.ask", objective="bad input",
                                  source="api", correlation_id="bad-input")
    return {
        "clients": {name: api_for(name) for name in ("admin", "finance", "security")} | {"agent": bot},
        "path": {"agent_id": agent.pk, "key_id": AgentKey.objects.filter(agent=agent).first().pk, "name": "all",
                 "budget_id": budget.pk, "action_id": action_id, "delegation_id": delegation.pk,
                 "grant_id": RoleGrant.objects.filter(agent=agent).first().pk, "approval_id": approval_id,
                 "run_id": run.pk},
    }


def _operations():
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")
    django.setup()
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method not in ("get", "post", "patch", "delete"):
                continue
            body = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "")
            fields = list(schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}).get("properties", {})) if ref else []
            query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            yield pytest.param(path, method, fields, query, id=f"{method.upper()} {path}")


def _call(client, method, url, raw=None):
    if raw is None:
        return getattr(client, method)(url)
    return client.generic(method.upper(), url, raw, content_type="application/json")


def _check(response, what):
    assert response.status_code < 500, (what, response.status_code, response.content[:300])
    if response.status_code >= 400:
        assert response["Content-Type"] == "application/problem+json", (what, response["Content-Type"])


@pytest.mark.parametrize("path,method,fields,query", list(_operations()))
def test_no_bad_input_is_a_server_error(world, path, method, fields, query):
    actor = next(name for prefix, name in ACTOR_BY_PREFIX if path.startswith(prefix))
    client = world["clients"][actor]
    url = re.sub(r"\{(\w+)\}", lambda m: str(world["path"][m.group(1)]), path)
    if method in ("post", "patch"):
        for raw in NASTY_BODIES:
            _check(_call(client, method, url, raw), (raw[:20],))
        for field in fields or ["anything"]:
            for value in NASTY_VALUES:
                _check(_call(client, method, url, json.dumps({field: value})), (field, repr(value)[:40]))
    else:
        for name in query or ["q"]:
            for value in NASTY_QUERY:
                _check(_call(client, method, f"{url}?{name}={value}"), (name, value[:20]))
