"""Runs that wait for a person, and runs that are stopped: cancel, kill switch, expiry."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from agents.models import AgentRun, RunStep
from audit.models import AuditEvent
from billing.models import BudgetPeriod
from governance.models import Action, Approval

from .conftest import drive

ESCALATE = '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");'


@pytest.fixture
def escalating(policy):
    policy("gpt4o-needs-finance", ESCALATE)


def test_a_run_waits_for_approval_without_a_worker_and_goes_on_when_finance_approves(
        runner_agent, start, escalating, api_for, eager_tasks, django_capture_on_commit_callbacks):
    run = start(runner_agent("careful"), "draft the board memo")
    assert drive(run) == "waiting" and run.status == "waiting_approval"
    step = RunStep.objects.get(run=run)
    assert step.status == "waiting_approval"
    approval = Approval.objects.get(action_id=step.action_id)
    assert approval.status == "pending" and approval.purpose == "draft the board memo"
    from agents.runtime.runner import run_advance

    assert run_advance(run.pk) == "waiting"  # a repeated delivery: still waiting, nothing asked again
    assert Action.objects.filter(agent=run.agent).count() == 1

    with django_capture_on_commit_callbacks(execute=True):  # the decision sends the run on (eager here)
        decided = api_for("finance").post(f"/api/v1/approvals/{approval.pk}/approve/", {"comment": "ok"}, format="json")
    assert decided.status_code == 200
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.result == {"model": "gpt-4o"}
    step.refresh_from_db()
    assert step.status == "succeeded" and Action.objects.get(pk=step.action_id).status == "succeeded"
    assert Action.objects.filter(agent=run.agent).count() == 1  # what was approved is what ran
    story = list(AuditEvent.objects.filter(correlation_id=run.correlation_id).order_by("id")
                 .values_list("action", flat=True))
    assert story == ["run.start", "gate.llm.call", "approval.approve", "approval.approved", "gate.complete",
                     "run.succeed"]


def test_a_denied_approval_reaches_the_program_as_a_denial(runner_agent, start, escalating, api_for, eager_tasks,
                                                           django_capture_on_commit_callbacks):
    run = start(runner_agent("careful"))
    drive(run)
    approval = Approval.objects.get(status="pending")
    with django_capture_on_commit_callbacks(execute=True):
        api_for("finance").post(f"/api/v1/approvals/{approval.pk}/deny/", {"comment": "too dear"}, format="json")
    run.refresh_from_db()
    assert run.status == "succeeded" and run.result["model"] == "gpt-4o-mini"
    assert any("too dear" in reason for reason in run.result["fallback_because"])


def test_an_approval_nobody_decides_expires_into_a_denial(runner_agent, start, escalating, eager_tasks,
                                                          django_capture_on_commit_callbacks):
    from governance.approvals import approvals_expire

    run = start(runner_agent("big"))
    drive(run)
    with django_capture_on_commit_callbacks(execute=True):
        assert approvals_expire(now=timezone.now() + dt.timedelta(days=2)) == 1
    run.refresh_from_db()
    assert run.status == "failed" and "expired" in run.error


def test_the_recovery_sweep_resumes_a_decided_run_whose_message_was_lost(runner_agent, start, escalating, personas,
                                                                         eager_tasks):
    from agents.runtime.services import runs_recover
    from governance.approvals import approval_decide

    run = start(runner_agent("big"))
    drive(run)
    approval_decide(approval=Approval.objects.get(status="pending"), by=personas["finance"], verdict="approve")
    run.refresh_from_db()
    assert run.status == "waiting_approval"  # the resume message went nowhere (no commit hook ran here)
    assert runs_recover() == 1
    run.refresh_from_db()
    assert run.status == "succeeded"


def test_cancelling_a_waiting_run_withdraws_its_approval(runner_agent, start, escalating, api_for):
    run = start(runner_agent("big"))
    drive(run)
    response = api_for("admin").post(f"/api/v1/runs/{run.pk}/cancel/", {"reason": "not needed"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    approval = Approval.objects.get()
    assert approval.status == "denied"
    assert f"withdrawn: run {run.pk} was cancelled" in approval.action.reasons[-1]
    assert RunStep.objects.get(run=run).status == "cancelled"
    again = api_for("admin").post(f"/api/v1/runs/{run.pk}/cancel/", {}, format="json")
    assert again.status_code == 409
    assert drive(run) == "gone"


def test_a_cancelled_run_stops_at_its_next_step_even_if_the_program_catches_everything(runner_agent, start, personas,
                                                                                      monkeypatch, team):
    from billing.services import budget_create

    budget_create(scope="team", team=team, monthly_limit_micros=10_000_000, by=personas["finance"])
    """Cancelled while step 1 is in flight: its reservation is released at once, the spend the provider
    then reports is still recorded (unreserved), and the program never gets a step 2."""
    from agents.runtime import providers
    from agents.runtime.services import run_cancel

    real = providers.chat
    calls = []

    def cancel_during_second_call(**kwargs):
        calls.append(kwargs["action_id"])
        answer = real(**kwargs)  # the provider has answered (and charged) ...
        if len(calls) == 2:  # ... when the run is cancelled, before the runtime records the answer
            action = Action.objects.get(pk=kwargs["action_id"])
            assert action.reserved_micros > 0
            run_cancel(run=AgentRun.objects.get(pk=run.pk), by=personas["security"], reason="runaway")
            assert BudgetPeriod.objects.get().reserved_micros == 0  # released at once
        return answer

    monkeypatch.setattr(providers, "chat", cancel_during_second_call)
    run = start(runner_agent("swallow"), "5")
    outcome = drive(run)
    assert outcome == "stopped" and run.status == "cancelled" and len(calls) == 2
    in_flight = Action.objects.get(pk=calls[1])
    assert in_flight.status == "succeeded" and in_flight.outcome == "denied"  # cancelled, then completed late
    assert in_flight.usage["usage_source"] == "simulated"
    assert all(p.reserved_micros == 0 for p in BudgetPeriod.objects.all())
    assert RunStep.objects.filter(run=run).count() == 2
    assert run.error.startswith("cancelled by security-user: runaway")


def test_suspending_the_agent_cancels_its_runs_at_once(runner_agent, start, personas, escalating, client_for):
    from agents.services import agent_suspend

    agent = runner_agent("big")
    waiting, queued = start(agent), start(agent)
    drive(waiting)
    agent_suspend(agent=agent, by=personas["security"], reason="leaking secrets")
    for run in (waiting, queued):
        run.refresh_from_db()
        assert run.status == "cancelled" and "suspended: leaking secrets" in run.error
    assert Approval.objects.get().status == "denied"
    assert drive(queued) == "gone"
    assert AuditEvent.objects.filter(action="run.cancel").count() == 2
