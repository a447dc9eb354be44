"""Each outcome path of the gate, through POST /api/v1/actions/ and the real database."""

import datetime as dt

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from governance.models import Action, Approval
from tests.conftest import ask

PERMIT_LLM = 'permit(principal, action == Action::"llm.call", resource);'
PERMIT_ALL = "permit(principal, action, resource);"


def test_a_permitted_action_is_allowed_and_recorded_with_its_policy(bot, policy):
    policy("llm-ok", PERMIT_LLM)
    response = ask(bot)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["outcome"] == "allowed"
    assert body["policies"] == ["llm-ok"]
    assert body["reasons"] == ["permitted by policy llm-ok"]
    assert body["approval"] is None
    action = Action.objects.get(pk=body["id"])
    assert (action.outcome, action.policy_version, action.agent_id) == ("allowed", 1, bot.agent.pk)
    event = AuditEvent.objects.get(action="gate.llm.call")
    assert (event.outcome, event.policy_ids, event.policy_version) == ("allowed", ["llm-ok"], 1)
    assert event.payload["action_id"] == body["id"]
    assert event.correlation_id == response["X-Request-ID"]


def test_no_permit_means_denied(bot, policy):
    policy("tools-only", 'permit(principal, action == Action::"tool.call", resource);')
    body = ask(bot).json()
    assert body["outcome"] == "denied"
    assert body["reasons"] == ["no policy permits this action"]
    assert Action.objects.get(pk=body["id"]).outcome == "denied"


def test_a_forbid_beats_a_permit_and_is_named(bot, policy, data_views):
    policy("all", PERMIT_ALL)
    policy("no-secrets", "forbid(principal, action == Action::\"data.read\", resource) "
                         "when { resource.classification > principal.clearance };")
    ok = ask(bot, "data.read", "crm", {}).json()
    assert ok["outcome"] == "allowed"
    body = ask(bot, "data.read", "hr-salaries", {}).json()
    assert body["outcome"] == "denied"
    assert body["policies"] == ["no-secrets"]
    assert body["reasons"] == ["forbidden by policy no-secrets"]


def test_an_escalating_forbid_makes_the_action_wait_for_that_group(bot, policy):
    policy("all", PERMIT_ALL)
    policy("big-spend", '@escalate("finance")\nforbid(principal, action == Action::"llm.call", resource) '
                        "when { context.estimated_cost_micros > 1000000 };")
    body = ask(bot, context={"input_tokens": 1, "max_output_tokens": 1, "estimated_cost_micros": 5_000_000}).json()
    assert body["outcome"] == "pending_approval"
    assert body["approval"]["group"] == "finance" and body["approval"]["status"] == "pending"
    assert body["reasons"] == ["policy big-spend requires approval by finance"]
    assert Approval.objects.get(action_id=body["id"]).group == "finance"
    small = ask(bot, context={"input_tokens": 1, "max_output_tokens": 1, "estimated_cost_micros": 10}).json()
    assert small["outcome"] == "allowed"


def test_escalation_does_not_override_a_plain_forbid(bot, policy):
    policy("all", PERMIT_ALL)
    policy("big-spend", '@escalate("finance")\nforbid(principal, action, resource) when { context.estimated_cost_micros > 10 };')
    policy("no-gpt4o", 'forbid(principal, action, resource == Model::"gpt-4o");')
    body = ask(bot, resource="gpt-4o", context={"input_tokens": 1, "max_output_tokens": 1, "estimated_cost_micros": 50}).json()
    assert body["outcome"] == "denied"
    assert body["policies"] == ["no-gpt4o"]
    assert not Approval.objects.exists()


def test_an_observe_mode_policy_is_recorded_but_not_enforced(bot, policy):
    policy("all", PERMIT_ALL)
    policy("dry-run", '@mode("observe")\nforbid(principal, action == Action::"llm.call", resource == Model::"gpt-4o-mini");')
    body = ask(bot).json()
    assert body["outcome"] == "allowed"
    assert body["observed"] == {"outcome": "denied", "reasons": ["forbidden by policy dry-run"], "policies": ["dry-run"]}
    event = AuditEvent.objects.get(action="gate.llm.call")
    assert event.payload["observed"]["policies"] == ["dry-run"]


def test_an_evaluation_error_denies(bot, policy):
    policy("all", PERMIT_ALL)
    # Valid against the schema, but overflows when evaluated.
    policy("overflow", "forbid(principal, action, resource) when { principal.clearance + 9223372036854775807 > 0 };")
    body = ask(bot).json()
    assert body["outcome"] == "denied"
    assert body["reasons"][0].startswith("policy evaluation error")


def test_an_expired_role_grant_gives_no_scope(bot, policy):
    from governance.models import RoleGrant

    policy("all", PERMIT_ALL)
    RoleGrant.objects.filter(agent=bot.agent).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    body = ask(bot).json()
    assert body["outcome"] == "denied"
    assert "expired" in body["reasons"][0] and "researcher" in body["reasons"][0]


def test_a_scope_the_roles_do_not_grant_is_denied(bot, policy):
    policy("all", PERMIT_ALL)
    body = ask(bot, "external.call", "https://api.example.com/x").json()
    assert body["outcome"] == "denied"
    assert body["reasons"] == ["scope external.call is not granted by the agent's roles (researcher)"]


def test_a_model_outside_the_capability_list_is_denied(bot, policy):
    policy("all", PERMIT_ALL)
    body = ask(bot, resource="o1-pro").json()
    assert body["outcome"] == "denied" and "allowed models" in body["reasons"][0]


def test_a_suspended_agent_is_denied_and_the_denial_is_recorded(bot, policy, personas):
    from agents.services import agent_suspend

    policy("all", PERMIT_ALL)
    agent_suspend(agent=bot.agent, by=personas["security"], reason="rogue")
    body = ask(bot).json()
    assert body["outcome"] == "denied"
    assert body["reasons"] == ["agent bot is suspended: rogue"]
    assert AuditEvent.objects.filter(action="gate.llm.call", outcome="denied").count() == 1


def test_a_revoked_key_cannot_ask_at_all(bot, policy, personas):
    from agents.models import AgentKey
    from agents.services import agent_key_revoke

    policy("all", PERMIT_ALL)
    agent_key_revoke(key=AgentKey.objects.get(agent=bot.agent), by=personas["admin"])
    assert ask(bot).status_code == 401
    assert not Action.objects.exists()


def test_delegation_narrows_what_the_agent_may_do(bot, policy, personas, make_agent, data_views):
    from agents.services import delegation_create, delegation_revoke

    policy("all", PERMIT_ALL)
    delegation = delegation_create(delegate=bot.agent, by_user=personas["admin"], scopes=["llm.call"],
                                   expires_at=timezone.now() + dt.timedelta(hours=1))
    allowed = ask(bot, on_behalf_of=str(delegation.pk)).json()
    assert allowed["outcome"] == "allowed"
    assert [hop["name"] for hop in allowed["delegation_chain"]] == ["admin-user", "bot"]
    # the agent's own role grants data.read, but the delegation does not
    narrowed = ask(bot, "data.read", "crm", {}, on_behalf_of=str(delegation.pk)).json()
    assert narrowed["outcome"] == "denied" and "not in the delegation" in narrowed["reasons"][0]
    delegation_revoke(delegation=delegation, by=personas["admin"])
    revoked = ask(bot, on_behalf_of=str(delegation.pk)).json()
    assert revoked["outcome"] == "denied" and "revoked" in revoked["reasons"][0]


def test_policies_can_see_the_delegation_depth(bot, policy, personas, make_agent):
    from agents.services import delegation_create

    policy("all", PERMIT_ALL)
    policy("shallow", "forbid(principal, action, resource) when { context.delegation_depth > 0 };")
    delegation = delegation_create(delegate=bot.agent, by_user=personas["admin"], scopes=["llm.call"],
                                   expires_at=timezone.now() + dt.timedelta(hours=1))
    assert ask(bot).json()["outcome"] == "allowed"
    assert ask(bot, on_behalf_of=str(delegation.pk)).json()["policies"] == ["shallow"]


def test_roles_and_teams_can_be_policy_principals(bot, policy):
    policy("researchers", 'permit(principal in Role::"researcher", action == Action::"llm.call", resource);')
    policy("research-team-no-gpt4o", 'forbid(principal in Team::"research", action, resource == Model::"gpt-4o");')
    assert ask(bot).json()["outcome"] == "allowed"
    assert ask(bot, resource="gpt-4o").json()["policies"] == ["research-team-no-gpt4o"]


def test_a_policy_change_reaches_the_very_next_decision(bot, policy, personas):
    from governance.models import Policy
    from governance.services import policy_set_enabled

    policy("all", PERMIT_ALL)
    assert ask(bot).json()["outcome"] == "allowed"
    policy("stop", "forbid(principal, action, resource);")
    assert ask(bot).json()["outcome"] == "denied"
    policy_set_enabled(policy=Policy.objects.get(name="stop"), enabled=False, by=personas["admin"], reason="over")
    after = ask(bot).json()
    assert after["outcome"] == "allowed" and after["policy_version"] == 3


def test_no_policies_at_all_denies(bot):
    body = ask(bot).json()
    assert body["outcome"] == "denied" and body["reasons"] == ["no policy permits this action"]


def test_an_agent_delegates_through_the_gate(make_agent, agent_client, policy):
    from agents.models import Delegation

    policy("all", PERMIT_ALL)
    boss = make_agent("boss", role_names=["orchestrator"])
    make_agent("helper")
    client = agent_client(boss)
    body = {"delegate": "helper", "scopes": ["llm.call"], "expires_in_hours": 1}
    response = client.post("/api/v1/delegations/", body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["action"]["outcome"] == "allowed"
    delegation = Delegation.objects.get(pk=response.json()["delegation"]["id"])
    assert (delegation.delegator_agent, delegation.delegate.name, delegation.scopes) == (boss, "helper", ["llm.call"])
    action = Action.objects.get(pk=response.json()["action"]["id"])
    assert (action.action, action.status) == ("agent.delegate", "succeeded")
    # a scope the agent does not hold: denied by the gate, nothing created
    wide = client.post("/api/v1/delegations/", {**body, "scopes": ["external.call"]}, format="json").json()
    assert wide["action"]["outcome"] == "denied" and wide["delegation"] is None
    assert "cannot delegate scopes it does not hold" in wide["action"]["reasons"][0]
    # a policy can forbid delegation altogether
    policy("no-delegation", 'forbid(principal, action == Action::"agent.delegate", resource);')
    blocked = client.post("/api/v1/delegations/", body, format="json").json()
    assert blocked["action"]["policies"] == ["no-delegation"] and blocked["delegation"] is None
    assert Delegation.objects.count() == 1


def test_an_agent_without_agent_delegate_cannot_delegate(bot, make_agent, policy):
    from agents.models import Delegation

    policy("all", PERMIT_ALL)
    make_agent("helper")
    response = bot.post("/api/v1/delegations/", {"delegate": "helper", "scopes": ["llm.call"], "expires_in_hours": 1}, format="json")
    assert response.json()["action"]["outcome"] == "denied"
    assert "scope agent.delegate is not granted" in response.json()["action"]["reasons"][0]
    assert not Delegation.objects.exists()
