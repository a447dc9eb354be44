"""An agent that wants more than it is given, over the real API: nothing it declares decides money,
clearance or the audit record. One test per abuse that was reproduced against `make run`."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from audit.verify import verify
from billing.models import BudgetPeriod, LedgerEntry
from governance.models import Action
from tests.conftest import ask

PERMIT_ALL = "permit(principal, action, resource);"
MINI = {"input_tokens": 1000, "max_output_tokens": 1000}  # reserves 150 + 600 = 750 micro-dollars


@pytest.fixture
def open_gate(policy):
    policy("all", PERMIT_ALL)


def complete(client, action_id, **body):
    return client.post(f"/api/v1/actions/{action_id}/complete/", body, format="json")


def test_a_declared_cost_of_zero_is_a_remark_the_charge_is_warden_s_price(bot, open_gate):
    allowed = ask(bot, context=MINI).json()
    reported = complete(bot, allowed["id"], status="succeeded", cost=0,
                        usage={"model": "gpt-4o-mini", "input_tokens": 800, "output_tokens": 700})
    assert reported.status_code == 200, reported.json()
    # 800 x $0.15 + 700 x $0.60 per million = 120 + 420
    entry = LedgerEntry.objects.get(action_id=allowed["id"])
    assert (entry.cost_micros, entry.usage_source) == (540, "agent")
    assert Action.objects.get(pk=allowed["id"]).usage["declared_cost_micros"] == 0
    # Without usage, a success is charged what it reserved: never less than Warden's own estimate.
    second = ask(bot, context=MINI).json()
    complete(bot, second["id"], status="succeeded", cost=0)
    assert LedgerEntry.objects.get(action_id=second["id"]).cost_micros == 750
    event = AuditEvent.objects.filter(action="gate.complete").order_by("-id").first()
    assert event.cost_micros == 750 and event.payload["declared_cost_micros"] == 0
    assert event.payload["usage_source"] == "agent"


def test_a_priced_tool_costs_its_price_per_call_whatever_the_agent_says(bot, open_gate):
    allowed = ask(bot, "tool.call", "search", {"estimated_cost_micros": 0}).json()
    assert (allowed["outcome"], allowed["reserved"]) == ("allowed", 10_000)  # the price, not the agent's 0
    complete(bot, allowed["id"], status="succeeded", cost=1, usage={"calls": 0})
    assert LedgerEntry.objects.get(action_id=allowed["id"]).cost_micros == 10_000  # a success is at least one call
    many = ask(bot, "tool.call", "search", {}).json()
    complete(bot, many["id"], status="succeeded", usage={"calls": 3})
    assert LedgerEntry.objects.get(action_id=many["id"]).cost_micros == 30_000


def test_an_estimate_may_raise_a_reservation_never_lower_it(bot, open_gate):
    low = ask(bot, context={**MINI, "estimated_cost_micros": 1}).json()
    high = ask(bot, context={**MINI, "estimated_cost_micros": 5_000}).json()
    assert (low["reserved"], high["reserved"]) == (750, 5_000)
    assert Action.objects.get(pk=low["id"]).cedar_context["estimated_cost_micros"] == 750


def test_an_unpriced_host_is_refused_and_the_default_price_is_what_policies_see(bot, policy, personas):
    from billing.services import price_set

    policy("all", PERMIT_ALL)
    refused = ask(bot, "tool.http", "https://evil.example/x", {"estimated_cost_micros": 0}).json()
    assert refused["outcome"] == "denied" and "evil.example has no price" in refused["reasons"][0]
    price_set(kind="endpoint", name="*", per_call_micros=2_000, by=personas["finance"])
    policy("pricey", '@escalate("finance")\nforbid(principal, action, resource) '
                     "when { context.estimated_cost_micros > 1500 };")
    held = ask(bot, "tool.http", "https://evil.example/x", {"estimated_cost_micros": 0}).json()
    assert held["outcome"] == "pending_approval"  # the agent's 0 did not hide the cost from the threshold
    assert Action.objects.get(pk=held["id"]).cedar_context["estimated_cost_micros"] == 2_000


def test_a_float_in_usage_cannot_poison_the_audit_log(bot, open_gate, client_for):
    allowed = ask(bot, context=MINI).json()
    for usage in ({"input_tokens": 10, "output_tokens": 10, "note": 1e16},
                  {"input_tokens": 10, "output_tokens": 1e16},
                  {"input_tokens": 10.0, "output_tokens": 10}):
        response = complete(bot, allowed["id"], status="succeeded", usage=usage)
        assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert Action.objects.get(pk=allowed["id"]).status == "decided"
    assert verify().ok


@pytest.mark.parametrize("context", [
    {**MINI, "classification": ["public"]},
    {**MINI, "classification": {"public": 1}},
    {**MINI, "note": 1e16},
    {**MINI, "note": "a\u0000b"},
    {**MINI, "deep": [[[[[[[[[[[[[[[[[["too deep"]]]]]]]]]]]]]]]]]]},
    {**MINI, "huge": 2**70},
    {**MINI, "big": "x" * 20_000},
])
def test_a_context_outside_the_canonical_form_is_400_and_changes_nothing(bot, open_gate, context):
    response = ask(bot, context=context)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert not Action.objects.exists() and not AuditEvent.objects.filter(action__startswith="gate.").exists()


@pytest.mark.parametrize("raw", [
    '{"action": "llm.call", "resource": "gpt-4o-mini", "context": ' + "[" * 3000 + "]" * 3000 + "}",
    '{"action": "llm.call", "resource": "gpt-4o-mini", "context": {"input_tokens": NaN, "max_output_tokens": 1}}',
    '{"action": "llm.call", "resource": "gpt-4o-mini", "context": {"x": "\\ud800"}}',
    '{"action": "llm.call", "resource": "gpt-4o\\u0000", "context": {}}',
])
def test_bodies_no_json_reader_or_database_could_take_are_400(bot, open_gate, raw):
    response = bot.generic("POST", "/api/v1/actions/", raw, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert not Action.objects.exists()


def test_completion_numbers_past_what_a_column_holds_are_400(bot, open_gate):
    allowed = ask(bot, context=MINI).json()
    for usage in ({"input_tokens": 2**70}, {"output_tokens": 2**40}, {"calls": -1}, {"model": "gpt-4o-mini\u0000"}):
        assert complete(bot, allowed["id"], status="succeeded", usage=usage).status_code == 400
    assert not LedgerEntry.objects.exists()


@pytest.mark.parametrize("query", ["month=0001-01", "month=9999-12", "month=2026-00", "month=%00", "month=２０２６-11"])
def test_months_a_calendar_cannot_hold_are_400(api_for, query):
    for path in ("/api/v1/budgets/", "/api/v1/spend/", "/api/v1/spend/export/"):
        response = api_for("finance").get(f"{path}?{query}")
        assert response.status_code == 400, (path, query, response.content)


def test_a_replay_after_suspension_is_not_told_allowed(bot, open_gate, personas):
    from agents.services import agent_suspend

    team_budget = _team_budget(personas, bot.agent.team)
    first = ask(bot, context=MINI, idempotency_key="job-7").json()
    assert first["outcome"] == "allowed" and first["reserved"] == 750
    agent_suspend(agent=bot.agent, by=personas["security"], reason="misbehaving")
    # What it was allowed and has not done is cancelled, its reservation released, and both audited.
    cancelled = Action.objects.get(pk=first["id"])
    assert (cancelled.status, cancelled.outcome) == ("cancelled", "denied")
    assert BudgetPeriod.objects.get(budget=team_budget).reserved_micros == 0
    assert AuditEvent.objects.filter(action="action.cancel", payload__action_id=first["id"]).count() == 1

    replay = ask(bot, context=MINI, idempotency_key="job-7")
    assert replay.status_code == 201
    body = replay.json()
    assert body["outcome"] == "denied" and body["id"] != first["id"]
    assert f"replay of action {first['id']}" in body["reasons"][0] and "is suspended: misbehaving" in body["reasons"][0]
    assert ask(bot, context=MINI, idempotency_key="job-7").json()["outcome"] == "denied"  # and every time after
    assert bot.get(f"/api/v1/actions/{first['id']}/").json()["outcome"] == "denied"
    assert verify().ok


def test_a_replay_with_a_revoked_delegation_is_not_told_allowed(bot, open_gate, personas):
    from agents.services import delegation_create, delegation_revoke

    delegation = delegation_create(delegate=bot.agent, by_user=personas["admin"], scopes=["llm.call"],
                                   expires_at=timezone.now() + dt.timedelta(hours=1))
    first = ask(bot, context=MINI, idempotency_key="d-1", on_behalf_of=str(delegation.pk)).json()
    assert first["outcome"] == "allowed"
    delegation_revoke(delegation=delegation, by=personas["admin"], reason="done")
    replay = ask(bot, context=MINI, idempotency_key="d-1", on_behalf_of=str(delegation.pk)).json()
    assert replay["outcome"] == "denied" and "was revoked" in replay["reasons"][0]
    assert Action.objects.get(pk=first["id"]).status == "cancelled"


def test_money_spent_after_a_cancellation_is_still_recorded(bot, open_gate, personas):
    from agents.services import agent_suspend

    team_budget = _team_budget(personas, bot.agent.team)
    allowed = ask(bot, context=MINI).json()
    agent_suspend(agent=bot.agent, by=personas["security"], reason="drill")
    # The agent had already called the model: its report still counts.
    late = complete(bot, allowed["id"], status="succeeded", usage={"input_tokens": 1000, "output_tokens": 1000})
    assert late.status_code == 200, late.json()
    entry = LedgerEntry.objects.get(action_id=allowed["id"])
    assert (entry.cost_micros, entry.unreserved) == (750, True)
    period = BudgetPeriod.objects.get(budget=team_budget)
    assert (period.spent_micros, period.reserved_micros) == (750, 0)
    event = AuditEvent.objects.get(action="gate.complete")
    assert "completed after the action was cancelled" in event.reasons[0]


def _team_budget(personas, team):
    from billing.services import budget_create

    return budget_create(scope="team", team=team, monthly_limit_micros=1_000_000, by=personas["finance"])


def test_classification_comes_from_the_registry_not_the_request(bot, policy, data_views):
    from governance.policy_templates import TEMPLATES

    policy("all", PERMIT_ALL)
    policy("clearance", TEMPLATES["confidential-data-needs-clearance"][1])
    lie = ask(bot, "data.read", "hr-salaries", {"classification": "public"}).json()
    assert lie["outcome"] == "denied" and lie["policies"] == ["clearance"]
    assert "context.classification (public) disagrees with Warden's registry of data views and was ignored" in lie["reasons"]
    event = AuditEvent.objects.get(action="gate.data.read")
    assert event.data_classification == "restricted"
    assert Action.objects.get(pk=lie["id"]).cedar_context["data_classification"] == 3
    unknown = ask(bot, "data.read", "not-registered", {"classification": "public"}).json()
    assert unknown["outcome"] == "denied"
    assert unknown["reasons"][0] == "no data view named not-registered in Warden's registry; an admin must register it"
    agreeing = ask(bot, "data.read", "crm", {"classification": "internal"}).json()
    assert agreeing["outcome"] == "allowed" and agreeing["reasons"] == ["permitted by policy all"]


def test_a_retired_view_is_denied_and_a_reclassified_one_counts_at_once(bot, policy, data_views, personas):
    from governance.policy_templates import TEMPLATES
    from governance.services import data_view_update

    policy("all", PERMIT_ALL)
    policy("clearance", TEMPLATES["confidential-data-needs-clearance"][1])
    assert ask(bot, "data.read", "crm", {}).json()["outcome"] == "allowed"
    data_view_update(view=data_views["crm"], by=personas["admin"], classification="confidential")
    assert ask(bot, "data.read", "crm", {}).json()["outcome"] == "denied"
    data_view_update(view=data_views["wiki"], by=personas["admin"], active=False)
    retired = ask(bot, "data.read", "wiki", {}).json()
    assert retired["outcome"] == "denied" and retired["reasons"] == ["data view wiki is retired"]


def test_pressing_the_kill_switch_again_finishes_a_cancellation_cut_short(bot, open_gate, personas, monkeypatch):
    from django.db import OperationalError

    from agents import services

    allowed = ask(bot, context=MINI).json()

    def cut_short(**kwargs):
        raise OperationalError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(services, "actions_cancel", cut_short)
        with pytest.raises(OperationalError):
            services.agent_suspend(agent=bot.agent, by=personas["security"], reason="first press")
    bot.agent.refresh_from_db()
    assert bot.agent.status == "suspended" and Action.objects.get(pk=allowed["id"]).status == "decided"
    services.agent_suspend(agent=bot.agent, by=personas["security"], reason="second press")
    assert Action.objects.get(pk=allowed["id"]).status == "cancelled"
    bot.agent.refresh_from_db()
    assert bot.agent.status_reason == "first press"
    assert AuditEvent.objects.filter(action="agent.suspend").count() == 1


def test_a_free_action_holds_nothing_whatever_it_declares(bot, policy, personas, data_views):
    policy("all", PERMIT_ALL)
    team_budget = _team_budget(personas, bot.agent.team)
    hostage = ask(bot, "data.read", "crm", {"estimated_cost_micros": 999_999}).json()
    assert (hostage["outcome"], hostage["reserved"]) == ("allowed", 0)
    assert not BudgetPeriod.objects.filter(budget=team_budget, reserved_micros__gt=0).exists()


def test_usage_beyond_what_was_asked_for_or_any_sane_cost_is_refused(bot, open_gate, personas):
    from billing.services import price_set

    allowed = ask(bot, context=MINI).json()
    too_much = complete(bot, allowed["id"], status="succeeded", usage={"input_tokens": 10, "output_tokens": 1001})
    assert too_much.status_code == 400 and "usage.output_tokens" in too_much.json()["errors"]
    price_set(kind="tool", name="search", per_call_micros=10**9, by=personas["finance"])
    tool = ask(bot, "tool.call", "search", {}).json()
    huge = complete(bot, tool["id"], status="succeeded", usage={"calls": 10**9})
    assert huge.status_code == 400 and "more than any one action may" in huge.json()["errors"]["usage"][0]
    assert not LedgerEntry.objects.exists()
    # A success that reports no tokens is charged, and recorded, as the tokens it asked for.
    complete(bot, allowed["id"], status="succeeded")
    entry = LedgerEntry.objects.get(action_id=allowed["id"])
    assert (entry.cost_micros, entry.input_tokens, entry.output_tokens) == (750, 1000, 1000)


def test_a_host_spelled_differently_is_still_that_host(bot, policy, personas):
    from billing.services import price_set

    policy("all", PERMIT_ALL)
    price_set(kind="endpoint", name="*", per_call_micros=1, by=personas["finance"])
    price_set(kind="endpoint", name="api.example.com", per_call_micros=50_000, by=personas["finance"])
    policy("no-example", 'forbid(principal, action == Action::"tool.http", resource) '
                         'when { resource.host == "api.example.com" };')
    for spelling in ("https://API.Example.com./v1", "https://u:p@api.example.com:443/", "api.example.com/v1"):
        body = ask(bot, "tool.http", spelling, {}).json()
        assert body["outcome"] == "denied" and body["policies"] == ["no-example"], spelling
        assert Action.objects.get(pk=body["id"]).estimated_cost_micros == 50_000
    for bad in ("https://api.example.com%2e/", "https://exa mple.com/", "a..b"):
        assert ask(bot, "tool.http", bad, {}).status_code == 400, bad
