"""The OpenAI-compatible provider against a local server that speaks the protocol; nothing runs ungated."""

from __future__ import annotations

import json

import pytest

from agents.models import RunStep
from agents.runtime import providers, tools
from agents.runtime.errors import NotAllowed
from billing.models import BudgetPeriod, LedgerEntry
from governance.models import Action
from tests.conftest import ask

from .conftest import drive
from .fake_openai import fake_openai


@pytest.fixture
def upstream(settings):
    with fake_openai() as fake:
        settings.WARDEN_LLM_UPSTREAMS = json.dumps({"gpt-4o*": {"base_url": fake.url, "api_key": "sk-upstream"},
                                                    "*": "simulated"})
        yield fake


def test_usage_comes_from_the_providers_answer_not_from_the_estimate(runner_agent, start, upstream):
    run = start(runner_agent("ask"), "hello there")
    assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert run.result == "fake answer to: hello there"
    (call,) = upstream.calls
    assert call["body"]["model"] == "gpt-4o-mini" and call["body"]["max_tokens"] == 50
    assert call["authorization"] == "Bearer sk-upstream"
    action = Action.objects.get(agent=run.agent)
    assert call["action"] == str(action.pk)
    assert action.usage == {"status": "succeeded", "usage": {"input_tokens": 21, "output_tokens": 7},
                            "usage_source": "provider"}
    assert action.context["input_tokens"] != 21  # Warden reserved on its own estimate; it is charged on this
    entry = LedgerEntry.objects.get(action=action)
    assert (entry.usage_source, entry.input_tokens, entry.output_tokens) == ("provider", 21, 7)
    step = RunStep.objects.get(run=run)
    assert (step.provider, step.input_tokens, step.output_tokens) == ("openai-compatible", 21, 7)


def test_rate_limits_and_server_errors_are_retried_with_backoff(runner_agent, start, upstream):
    upstream.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
    upstream.reply(503, {"error": {"message": "overloaded"}})
    run = start(runner_agent("ask"))
    assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert len(upstream.calls) == 3 and len(upstream.per_action()) == 1  # one action, three attempts
    step = RunStep.objects.get(run=run)
    assert step.retries == 2 and step.status == "succeeded"


def test_a_provider_that_keeps_failing_fails_the_step_and_releases_the_reservation(runner_agent, start, upstream,
                                                                                   personas, team, settings):
    from billing.services import budget_create

    settings.WARDEN_LLM_MAX_RETRIES = 1
    budget_create(scope="team", team=team, monthly_limit_micros=10_000_000, by=personas["finance"])
    for _ in range(2):
        upstream.reply(500, {"error": {"message": "boom"}})
    run = start(runner_agent("ask"))
    assert drive(run) == "finished" and run.status == "failed"
    assert "upstream answered 500: boom (after 1 retries)" in run.error
    action = Action.objects.get(agent=run.agent)
    assert action.status == "failed" and action.actual_cost_micros == 0
    assert BudgetPeriod.objects.get().reserved_micros == 0
    assert RunStep.objects.get(run=run).error_kind == "failed"


def test_a_client_error_is_not_retried(runner_agent, start, upstream):
    upstream.reply(400, {"error": {"message": "max_tokens is too large"}})
    run = start(runner_agent("ask"))
    drive(run)
    assert run.status == "failed" and "upstream answered 400: max_tokens is too large" in run.error
    assert len(upstream.calls) == 1


def test_a_provider_that_does_not_answer_in_time_fails_the_step(runner_agent, start, upstream, settings):
    settings.WARDEN_LLM_UPSTREAMS = json.dumps({"*": {"base_url": upstream.url, "timeout": 0.5, "max_retries": 0}})
    upstream.reply(200, None, delay=3)
    run = start(runner_agent("ask"))
    drive(run)
    assert run.status == "failed" and "APITimeoutError" in run.error
    assert Action.objects.get(agent=run.agent).status == "failed"


def test_an_answer_that_is_not_a_completion_fails_the_step(runner_agent, start, upstream):
    upstream.reply(200, "<html>proxy error</html>")
    run = start(runner_agent("ask"))
    drive(run)
    assert run.status == "failed" and "gpt-4o-mini:" in run.error


def test_a_model_without_an_upstream_is_refused_before_the_gate(runner_agent, start, settings):
    settings.WARDEN_LLM_UPSTREAMS = json.dumps({"claude-*": "simulated"})
    run = start(runner_agent("ask"))
    drive(run)
    assert run.status == "failed" and "no upstream is configured for model gpt-4o-mini" in run.error
    assert not Action.objects.exists()


def test_providers_and_tools_refuse_to_run_without_an_allowed_open_action(bot, policy, upstream):
    """Whatever calls them: a missing, denied, pending, completed, someone else's or mismatched action opens
    nothing, and nothing reaches the upstream."""
    from agents.services import agent_register
    from governance.gate import complete_action

    policy("all", "permit(principal, action, resource);")
    policy("fin", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    agent = bot.agent
    other = agent_register(name="other", owner=agent.owner, team=agent.team, by=agent.owner)
    allowed = Action.objects.get(pk=ask(bot).json()["id"])
    pending = Action.objects.get(pk=ask(bot, resource="gpt-4o").json()["id"])
    denied = Action.objects.get(pk=ask(bot, action="tool.call", resource="not-mine", context={}).json()["id"])
    searched = Action.objects.get(pk=ask(bot, action="tool.call", resource="search", context={}).json()["id"])
    completed = Action.objects.get(pk=ask(bot).json()["id"])
    complete_action(action=completed, status="succeeded", usage_source="agent")
    assert (allowed.outcome, pending.outcome, denied.outcome, searched.outcome) == (
        "allowed", "pending_approval", "denied", "allowed")
    message = [{"role": "user", "content": "hi"}]
    cases = {
        "no action": (None, "gpt-4o-mini", agent.pk),
        "pending": (pending.pk, "gpt-4o", agent.pk),
        "denied": (denied.pk, "not-mine", agent.pk),
        "completed": (completed.pk, "gpt-4o-mini", agent.pk),
        "another kind of action": (searched.pk, "search", agent.pk),
        "another model": (allowed.pk, "gpt-4o", agent.pk),
        "another agent": (allowed.pk, "gpt-4o-mini", other.pk),
    }
    for case, (action_id, model, agent_id) in cases.items():
        with pytest.raises(NotAllowed):
            providers.chat(action_id=action_id, agent_id=agent_id, model=model, messages=message, max_tokens=5)
            pytest.fail(case)
    with pytest.raises(NotAllowed):
        tools.execute(tool=tools.tool_get("http.get"), args={"url": "http://127.0.0.1:1/"}, action_id=searched.pk,
                      agent_id=agent.pk)
    with pytest.raises(NotAllowed):
        tools.execute(tool=tools.tool_get("email.send"), args={"to": "admin-user@example.test", "subject": "x",
                                                               "body": "y"}, action_id=allowed.pk, agent_id=agent.pk)
    assert upstream.calls == []
    answer = providers.chat(action_id=allowed.pk, agent_id=agent.pk, model="gpt-4o-mini", messages=message,
                            max_tokens=5)
    assert answer.text.startswith("fake answer") and len(upstream.calls) == 1
