"""Bad input, idempotency, completion, visibility of POST/GET /api/v1/actions/."""

import pytest

from governance.models import Action
from tests.conftest import ask

PERMIT_ALL = "permit(principal, action, resource);"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"action": "llm.hack", "resource": "x"}, "action"),
        ({"action": "llm.call", "resource": ""}, "resource"),
        ({"action": "llm.call", "resource": "gpt-4o-mini", "context": {"input_tokens": 10}}, "context.max_output_tokens"),
        ({"action": "llm.call", "resource": "gpt-4o-mini", "context": {"input_tokens": 1.5, "max_output_tokens": 1}}, "context.input_tokens"),
        ({"action": "llm.call", "resource": "gpt-4o-mini",
          "context": {"input_tokens": 1, "max_output_tokens": 1, "estimated_cost_micros": 0.25}}, "context.estimated_cost_micros"),
        ({"action": "data.read", "resource": "crm", "context": {"classification": "top-secret"}}, "context.classification"),
        ({"action": "llm.call", "resource": "gpt-4o-mini", "context": "nope"}, "context"),
        ({"action": "llm.call"}, "resource"),
        ({"action": "agent.delegate", "resource": "bot", "context": {"scopes": []}}, "context.scopes"),
        ({"action": "agent.delegate", "resource": "ghost", "context": {"scopes": ["llm.call"]}}, "resource"),
        ({"action": "llm.call", "resource": "gpt-4o-mini", "context": {"input_tokens": 1, "max_output_tokens": 1},
          "on_behalf_of": "00000000-0000-0000-0000-000000000000"}, "on_behalf_of"),
    ],
)
def test_requests_that_cannot_be_judged_are_400_and_record_nothing(bot, policy, body, field):
    policy("all", PERMIT_ALL)
    response = bot.post("/api/v1/actions/", body, format="json")
    assert response.status_code == 400, response.json()
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"], response.json()
    assert not Action.objects.exists()


def test_an_oversized_request_is_413(bot):
    response = ask(bot, context={"input_tokens": 1, "max_output_tokens": 1, "note": "x" * 70_000})
    assert response.status_code == 413
    assert not Action.objects.exists()


def test_the_same_idempotency_key_returns_the_same_action(bot, policy):
    policy("all", PERMIT_ALL)
    first = ask(bot, idempotency_key="job-42-step-1")
    second = ask(bot, idempotency_key="job-42-step-1")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert Action.objects.count() == 1


def test_a_replayed_idempotency_key_with_another_body_is_409(bot, policy):
    policy("all", PERMIT_ALL)
    ask(bot, idempotency_key="job-1")
    response = ask(bot, resource="gpt-4o", idempotency_key="job-1")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_mismatch"
    assert Action.objects.count() == 1


def test_idempotency_keys_are_per_agent(bot, policy, make_agent, agent_client):
    policy("all", PERMIT_ALL)
    other = agent_client(make_agent("other", allowed_models=["gpt-4o-mini"]))
    assert ask(bot, idempotency_key="k-1").json()["id"] != ask(other, idempotency_key="k-1").json()["id"]


def test_completion_settles_once_and_is_idempotent(bot, policy):
    policy("all", PERMIT_ALL)
    action_id = ask(bot).json()["id"]
    usage = {"model": "gpt-4o-mini", "input_tokens": 90, "output_tokens": 40}
    first = bot.post(f"/api/v1/actions/{action_id}/complete/", {"status": "succeeded", "usage": usage, "cost": 120}, format="json")
    assert first.status_code == 200
    # 90 input tokens at $0.15 and 40 output tokens at $0.60 per million, each rounded up: 14 + 24 micro-dollars
    assert first.json()["status"] == "succeeded" and first.json()["actual_cost_micros"] == 38
    again = bot.post(f"/api/v1/actions/{action_id}/complete/", {"status": "succeeded", "usage": usage, "cost": 120}, format="json")
    assert again.status_code == 200
    different = bot.post(f"/api/v1/actions/{action_id}/complete/", {"status": "failed"}, format="json")
    assert different.status_code == 409
    action = Action.objects.get(pk=action_id)
    assert (action.status, action.actual_cost_micros) == ("succeeded", 38)
    assert action.usage == {"status": "succeeded", "usage": usage, "usage_source": "agent", "declared_cost_micros": 120}
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(action="gate.complete").count() == 1


@pytest.mark.parametrize(
    "body,field",
    [
        ({"status": "done"}, "status"),
        ({"status": "succeeded", "usage": {"model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}}, "usage.model"),
        ({"status": "succeeded", "usage": {"model": "gpt-4o-mini", "input_tokens": -1, "output_tokens": 1}}, "usage.input_tokens"),
        ({"status": "succeeded", "cost": 1.5}, "cost"),
        ({"status": "succeeded", "usage": {"input_tokens": 2**70}}, "usage.input_tokens"),
        ({"status": "succeeded", "usage": {"input_tokens": 10, "note": 1}}, "usage"),
        ({"status": "succeeded", "usage": {"input_tokens": 10.0}}, "usage.input_tokens"),
        ({"status": "succeeded", "usage": {"model": "gpt-4o-mini\u0000"}}, "usage.model"),
    ],
)
def test_bad_completions_are_400_and_change_nothing(bot, policy, body, field):
    policy("all", PERMIT_ALL)
    action_id = ask(bot).json()["id"]
    response = bot.post(f"/api/v1/actions/{action_id}/complete/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert Action.objects.get(pk=action_id).status == "decided"


def test_a_denied_action_cannot_be_completed(bot):
    action_id = ask(bot).json()["id"]
    response = bot.post(f"/api/v1/actions/{action_id}/complete/", {"status": "succeeded"}, format="json")
    assert response.status_code == 409


def test_agents_see_only_their_own_actions_and_people_see_all(bot, policy, make_agent, agent_client, api_for):
    policy("all", PERMIT_ALL)
    action_id = ask(bot).json()["id"]
    other = agent_client(make_agent("other"))
    assert bot.get(f"/api/v1/actions/{action_id}/").status_code == 200
    assert other.get(f"/api/v1/actions/{action_id}/").status_code == 404
    assert other.post(f"/api/v1/actions/{action_id}/complete/", {"status": "failed"}, format="json").status_code == 404
    assert api_for("viewer").get(f"/api/v1/actions/{action_id}/").json()["outcome"] == "allowed"
    assert api_for("outsider").get(f"/api/v1/actions/{action_id}/").status_code == 404


def test_people_cannot_ask_the_gate(api_for, policy):
    response = api_for("admin").post("/api/v1/actions/", {"action": "llm.call", "resource": "x"}, format="json")
    assert response.status_code == 403


def test_the_callers_correlation_id_is_kept(bot, policy):
    policy("all", PERMIT_ALL)
    body = ask(bot, correlation_id="run-7-step-3").json()
    assert body["correlation_id"] == "run-7-step-3"
    from audit.models import AuditEvent

    assert AuditEvent.objects.get(action="gate.llm.call").correlation_id == "run-7-step-3"
