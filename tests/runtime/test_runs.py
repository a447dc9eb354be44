"""Runs of agents Warden's workers execute: every step through the gate, charged from the provider's answer."""

from __future__ import annotations

import pytest
from django.db.models import Sum

from agents.models import AgentRun, RunStep
from audit.models import AuditEvent
from billing.models import LedgerEntry
from governance.models import Action

from .conftest import drive


def test_a_run_goes_through_the_gate_step_by_step_and_is_charged_from_the_providers_answer(runner_agent, start):
    agent = runner_agent("steps")
    run = start(agent, "3")
    assert run.status == "queued"
    assert drive(run) == "finished"
    assert run.status == "succeeded", run.error
    assert run.result["steps"] == 3 and run.steps_done == 3
    steps = list(RunStep.objects.filter(run=run).order_by("index"))
    assert [(s.index, s.kind, s.name, s.status, s.provider) for s in steps] == [
        (i, "llm", "gpt-4o-mini", "succeeded", "simulated") for i in range(3)]
    actions = Action.objects.filter(agent=agent).order_by("created_at")
    assert [(a.outcome, a.status) for a in actions] == [("allowed", "succeeded")] * 3
    assert all(a.usage["usage_source"] == "simulated" for a in actions)
    assert all(step.action_id == action.pk for step, action in zip(steps, actions))
    spent = LedgerEntry.objects.filter(agent_id=agent.pk).aggregate(total=Sum("cost_micros"))["total"]
    assert spent > 0 and spent == run.cost_micros == sum(s.cost_micros for s in steps)
    assert all(s.input_tokens > 0 and s.output_tokens > 0 for s in steps)
    story = list(AuditEvent.objects.filter(correlation_id=run.correlation_id).order_by("id")
                 .values_list("action", flat=True))
    assert story == ["run.start", *["gate.llm.call", "gate.complete"] * 3, "run.succeed"]


def test_a_run_taken_up_again_replays_finished_steps_and_reruns_only_the_interrupted_one(runner_agent, start,
                                                                                         monkeypatch):
    """A worker dies in the middle of step 2 (after the gate, during the provider call): the next delivery
    replays steps 0 and 1 from the ledger and runs step 2 again under the same Action."""
    from agents.runtime import providers

    calls: list[str] = []
    real = providers.chat

    def counting(**kwargs):
        calls.append(str(kwargs["action_id"]))
        if len(calls) == 3:
            raise KeyboardInterrupt("the worker is killed")  # not an Exception: nothing in the runtime catches it
        return real(**kwargs)

    monkeypatch.setattr(providers, "chat", counting)
    agent = runner_agent("steps")
    run = start(agent, "4")
    with pytest.raises(KeyboardInterrupt):
        drive(run)
    run.refresh_from_db()
    assert run.status == "running"
    assert list(RunStep.objects.filter(run=run).order_by("index").values_list("status", flat=True)) == [
        "succeeded", "succeeded", "running"]
    interrupted = RunStep.objects.get(run=run, index=2)
    assert Action.objects.get(pk=interrupted.action_id).status == "decided"  # allowed, held, not completed

    assert drive(run) == "finished" and run.status == "succeeded"
    assert len(calls) == 5  # 0, 1, 2 (killed), 2 again, 3
    assert calls.count(calls[2]) == 2 and len(set(calls)) == 4  # only the interrupted step's action ran twice
    finished = list(RunStep.objects.filter(run=run).order_by("index"))
    assert [str(step.action_id) for step in finished] == [calls[0], calls[1], calls[2], calls[4]]
    assert Action.objects.filter(agent=agent).count() == 4
    assert all(a.status == "succeeded" for a in Action.objects.filter(agent=agent))
    assert run.deliveries == 2


def test_a_run_that_asks_for_something_else_on_replay_fails_saying_it_diverged(runner_agent, start):
    from agents.runtime.runner import run_advance

    run = start(runner_agent("fickle"))
    assert run_advance(run.pk) == "finished"
    run.refresh_from_db()
    assert run.status == "failed" and "RuntimeError: stop here" in run.error
    # As if the task had died before it recorded the end: taken up again, the program asks for "call 2".
    AgentRun.objects.filter(pk=run.pk).update(status="running", error="", finished_at=None)
    assert drive(run) == "finished"
    assert run.status == "failed" and "diverged at step 0" in run.error
    assert Action.objects.filter(agent=run.agent).count() == 2  # nothing more was asked of the gate


def test_a_denial_reaches_the_program_which_may_handle_it(runner_agent, start, policy):
    policy("no-big-model", 'forbid(principal, action, resource == Model::"gpt-4o");')
    run = start(runner_agent("careful"))
    assert drive(run) == "finished" and run.status == "succeeded"
    assert run.result["model"] == "gpt-4o-mini"
    assert run.result["fallback_because"] == ["forbidden by policy no-big-model"]
    denied, done = RunStep.objects.filter(run=run).order_by("index")
    assert (denied.status, denied.error_kind, done.status) == ("denied", "denied", "succeeded")
    assert Action.objects.get(pk=denied.action_id).outcome == "denied"


def test_an_unhandled_denial_fails_the_run_with_the_gates_reasons(runner_agent, start, policy):
    policy("no-big-model", 'forbid(principal, action, resource == Model::"gpt-4o");')
    run = start(runner_agent("big"))
    assert drive(run) == "finished"
    assert run.status == "failed" and run.error == "step 0: denied: forbidden by policy no-big-model"
    assert AuditEvent.objects.filter(correlation_id=run.correlation_id, action="run.fail").count() == 1


def test_a_budget_that_runs_out_stops_the_run_and_holds_nothing(runner_agent, start, personas):
    from billing.models import BudgetPeriod
    from billing.services import budget_create

    agent = runner_agent("steps")
    budget = budget_create(scope="agent", agent=agent, monthly_limit_micros=90, by=personas["finance"])
    run = start(agent, "20")
    assert drive(run) == "finished" and run.status == "failed"
    assert "budget agent runner would be exceeded" in run.error
    period = BudgetPeriod.objects.get(budget=budget)
    assert period.reserved_micros == 0 and 0 < period.spent_micros <= 90
    assert period.spent_micros == run.cost_micros
    assert RunStep.objects.filter(run=run, status="denied").count() == 1


def test_a_program_that_loops_for_ever_is_stopped_at_the_step_limit(runner_agent, start, settings):
    settings.WARDEN_RUN_MAX_STEPS = 7
    run = start(runner_agent("endless"))
    assert drive(run) == "finished"
    assert run.status == "failed" and "limit of 7 steps" in run.error
    assert RunStep.objects.filter(run=run).count() == 7


def test_a_task_hands_the_run_on_after_its_share_of_steps(runner_agent, start, settings):
    from agents.runtime.runner import run_advance

    settings.WARDEN_RUN_STEPS_PER_TASK = 2
    run = start(runner_agent("steps"), "5")
    assert [run_advance(run.pk) for _ in range(3)] == ["again", "again", "finished"]
    run.refresh_from_db()
    assert run.status == "succeeded" and run.deliveries == 3


def test_structured_output_that_does_not_validate_is_rejected_and_asked_again(runner_agent, start, settings):
    settings.WARDEN_SIMULATED_INVALID_PERCENT = 100  # the first answer always leaves out a required field
    run = start(runner_agent("structured"), "review the draft")
    assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert set(run.result) == {"approved", "score", "notes"}
    step = RunStep.objects.get(run=run)
    assert step.retries == 1 and len(step.attempts) == 2
    assert "'approved' is a required property" in step.attempts[0]["rejected"]
    assert "rejected" not in step.attempts[1]
    charged = Action.objects.filter(agent=run.agent, status="succeeded")
    assert charged.count() == 2 and sum(a.actual_cost_micros for a in charged) == step.cost_micros == run.cost_micros


def test_a_plan_is_validated_before_any_step_runs_and_kept_on_the_run(runner_agent, start):
    run = start(runner_agent("planned"), "compare three vector databases")
    assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert set(run.plan) == {"objective", "steps", "constraints"} and 1 <= len(run.plan["steps"]) <= 8
    kinds = list(RunStep.objects.filter(run=run).order_by("index").values_list("kind", flat=True))
    assert kinds == ["plan", *["llm"] * len(run.plan["steps"])]


def test_reading_an_unknown_data_view_is_refused_clearly_and_nothing_is_asked(runner_agent, start):
    run = start(runner_agent("reader"))
    assert drive(run) == "finished" and run.status == "failed"
    assert "No such data view" in run.error
    step = RunStep.objects.get(run=run)
    assert step.status == "refused" and step.action_id is None
    assert AuditEvent.objects.filter(correlation_id=run.correlation_id, action="run.step.refuse").count() == 1
    assert not Action.objects.filter(agent=run.agent).exists()
