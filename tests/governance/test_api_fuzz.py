"""API fuzzing: schemathesis generates requests for every operation of `/api/schema/` and sends each one as
every human group (a real personal API token each) and as an agent (a real agent key), first with the path
it generated and then aimed at objects that exist, so bodies reach the services and not only a 404.

Every answer must: never be a 5xx; conform to the schema (its status documented for the operation, its
content type and body as documented); and, when it is an error, be `application/problem+json` with the
status it was sent with. `WARDEN_FUZZ_EXAMPLES` bounds the generated examples per operation (CI's default
keeps the whole file near a minute); each operation is a test of its own, in a transaction rolled back.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from governance.wsgi import application

EXAMPLES = int(os.environ.get("WARDEN_FUZZ_EXAMPLES", "5"))
# Schemathesis's coverage phase (boundary values and negative cases for every parameter) sends hundreds of
# requests per operation: the whole of it runs with WARDEN_FUZZ_COVERAGE=1 (~3 minutes); CI runs the
# generated examples of every operation for every identity.
COVERAGE = os.environ.get("WARDEN_FUZZ_COVERAGE", "0") == "1"
SCHEMA = schemathesis.openapi.from_wsgi(
    "/api/schema/", application,
    config=SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": COVERAGE}}}))
PROBLEM = "application/problem+json"


def problem_details(ctx, response, case):
    """Every error is RFC 9457 problem details, with the status it came with."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0].split(";")[0]
    assert content_type == PROBLEM, f"{response.status_code} answered as {content_type!r}, not {PROBLEM}"
    body = json.loads(response.content)
    assert body.get("status") == response.status_code and body.get("title"), body
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          problem_details]


@pytest.fixture(autouse=True)
def connection_kept_across_requests():
    """As Django's test client does: the handler must not close the test's connection (and transaction)
    at each request's start and end; schemathesis calls the WSGI application itself."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def world(personas, make_agent, agent_client, policy, prices, data_views):
    """Tokens for each group and an agent key, and one object of each kind for paths to aim at."""
    from agents import services as agents
    from agents.models import AgentRun
    from billing.services import budget_create
    from governance.gate import request_action
    from governance.models import RoleGrant
    from governance.services import api_token_issue

    policy("all", "permit(principal, action, resource);")
    policy("escalate-4o", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    agent = make_agent("fuzzed", role_names=("researcher",), allowed_models=["gpt-4o-mini", "gpt-4o"])
    key, secret = agents.agent_key_issue(agent=agent, by=personas["admin"])
    budget = budget_create(scope="team", team=agent.team, monthly_limit_micros=1_000_000_000, by=personas["finance"])
    allowed = request_action(agent=agent, key=key, action="llm.call", resource="gpt-4o-mini",
                             context={"input_tokens": 10, "max_output_tokens": 10})
    escalated = request_action(agent=agent, key=key, action="llm.call", resource="gpt-4o",
                               context={"input_tokens": 10, "max_output_tokens": 10})
    headers = {name: {"Authorization": f"Bearer {api_token_issue(user=personas[name], name='fuzz')[1]}"}
               for name in ("admin", "finance", "security", "viewer")}
    headers["agent"] = {"Authorization": f"Bearer {secret}"}
    grant = RoleGrant.objects.filter(agent=agent).first()
    run = AgentRun.objects.filter(agent=agent).first()
    real = {
        "agent_id": str(agent.pk), "key_id": str(key.pk), "budget_id": str(budget.pk),
        "action_id": str(allowed.pk), "approval_id": str(escalated.approval.pk) if escalated.approval else None,
        "name": "all", "grant_id": str(grant.pk) if grant else None, "run_id": str(run.pk) if run else None,
    }
    return {"headers": headers, "real": {k: v for k, v in real.items() if v is not None}}


def aimed(case, real: dict) -> dict | None:
    """The path parameters pointed at objects that exist (names per resource), or None if none apply."""
    params = dict(case.path_parameters or {})
    if not params:
        return None
    names = {"/policies/": "all", "/roles/": "researcher", "/data-views/": "crm", "/mcp-servers/": "crm"}
    for key in params:
        if key == "name":
            params[key] = next((value for prefix, value in names.items() if prefix in case.path), "all")
        elif key in real:
            params[key] = real[key]
    return params


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_every_operation_as_every_identity(case, world):
    for identity, headers in world["headers"].items():
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)
    params = aimed(case, world["real"])
    if params is not None:
        case.path_parameters = params
        for identity, headers in world["headers"].items():
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)
