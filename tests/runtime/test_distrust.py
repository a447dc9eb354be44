"""The runtime does not trust the program it runs, nor the agent whose key could reach the runtime's Actions.

What a careless (or wilful) program can do with its schemas, its text and its `except:` clauses, and what
an agent can try over the REST API against its own runs' Actions; and a cancellation that lands in the gaps
between the gate's decision and the step, or races the worker's completions.
"""

from __future__ import annotations

import random
import threading

import pytest
from django.db import connection
from django.db.models import Sum

from agents.models import AgentRun, RunStep
from audit.verify import verify
from billing.models import BudgetPeriod, LedgerEntry
from governance.models import Action, Approval

from .conftest import drive

ESCALATE = '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");'


def nothing_held() -> bool:
    return BudgetPeriod.objects.aggregate(total=Sum("reserved_micros"))["total"] in (None, 0)


def test_an_answer_that_cannot_be_checked_is_rejected_and_every_answer_is_paid_for(runner_agent, start, settings):
    settings.WARDEN_RUN_OUTPUT_RETRIES = 2
    run = start(runner_agent("unjudgeable"), "anything")
    assert drive(run) == "finished" and run.status == "failed"
    assert "did not validate after 3 tries" in run.error and "could not be checked" in run.error
    actions = Action.objects.filter(agent=run.agent)
    assert actions.count() == 3 and set(actions.values_list("status", flat=True)) == {"succeeded"}
    assert LedgerEntry.objects.count() == 3 and nothing_held()
    step = RunStep.objects.get(run=run)
    assert step.cost_micros == run.cost_micros == sum(a.actual_cost_micros for a in actions) > 0


def test_an_answer_paid_for_and_then_interrupted_is_judged_on_the_next_delivery_without_asking_again(
        runner_agent, start, monkeypatch):
    from agents.runtime import providers
    from agents.runtime.context import Context

    calls = []
    real_chat, real_judged = providers.chat, Context._judged

    def counting(**kwargs):
        calls.append(kwargs["action_id"])
        return real_chat(**kwargs)

    def killed_once(self, step, **kwargs):
        if not getattr(killed_once, "done", False):
            killed_once.done = True
            raise KeyboardInterrupt("the worker is killed after the answer was recorded")
        return real_judged(self, step, **kwargs)

    monkeypatch.setattr(providers, "chat", counting)
    monkeypatch.setattr(Context, "_judged", killed_once)
    run = start(runner_agent("structured"), "review the draft")
    with pytest.raises(KeyboardInterrupt):
        drive(run)
    action = Action.objects.get(agent=run.agent)
    assert action.status == "succeeded" and LedgerEntry.objects.count() == 1  # paid for before anything else

    assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert len(calls) == 1 and Action.objects.filter(agent=run.agent).count() == 1  # not asked again
    assert set(run.result) == {"approved", "score", "notes"}
    step = RunStep.objects.get(run=run)
    assert step.status == "succeeded" and len(step.attempts) == 1 and "answered" not in step.attempts[0]


def test_an_oversized_response_schema_is_refused_before_the_gate(runner_agent, start):
    run = start(runner_agent("oversized"), "anything")
    assert drive(run) == "finished" and run.status == "failed"
    assert "response_schema: at most 20000 characters" in run.error
    assert not Action.objects.filter(agent=run.agent).exists()


def test_the_schema_sent_to_the_model_is_part_of_the_estimate(runner_agent, start):
    from agents.runtime.schemas import REVIEW_SCHEMA

    run = start(runner_agent("structured"), "review")
    drive(run)
    plain = start(runner_agent("ask", name="plain"), "review")
    drive(plain)
    with_schema = Action.objects.get(agent=run.agent).context["input_tokens"]
    without = Action.objects.get(agent=plain.agent).context["input_tokens"]
    assert with_schema - without >= len(str(REVIEW_SCHEMA)) // 4


def test_text_postgresql_cannot_store_is_cleaned_and_the_audit_chain_holds(runner_agent, start):
    run = start(runner_agent("strange_text"), "fine")
    assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert run.result["odd"] == "\ufffd\ufffd"
    assert "\x00" not in RunStep.objects.get(run=run).input_summary
    assert verify().ok


def test_a_bad_tool_name_fails_the_run_once_instead_of_crashing_its_worker_again_and_again(runner_agent, start):
    run = start(runner_agent("strange_text"), "bad name")
    assert drive(run) == "finished" and run.status == "failed"
    assert "tool(): a name of 1 to 255 printable characters" in run.error
    assert run.deliveries == 1


def test_a_program_that_swallows_the_wait_for_a_person_still_waits(runner_agent, start, policy):
    policy("gpt4o-needs-finance", ESCALATE)
    run = start(runner_agent("stubborn"), "draft it")
    assert drive(run) == "waiting" and run.status == "waiting_approval"
    assert run.result is None
    assert Approval.objects.get().status == "pending"


# --- a cancellation in the gaps ---------------------------------------------------------------------------


@pytest.fixture
def team_budget(team, personas):
    from billing.services import budget_create

    return budget_create(scope="team", team=team, monthly_limit_micros=100_000_000, by=personas["finance"])


def test_cancelling_finds_an_action_the_gate_allowed_before_its_step_knew_of_it(runner_agent, start, personas,
                                                                                 team_budget):
    from agents.runtime.services import run_cancel
    from governance.gate import request_action

    run = start(runner_agent("ask"), "hello")
    AgentRun.objects.filter(pk=run.pk).update(status="running")
    # What a worker's gate call committed a moment ago, before it linked the Action to its step.
    action = request_action(agent=run.agent, action="llm.call", resource="gpt-4o-mini",
                            context={"input_tokens": 10, "max_output_tokens": 50},
                            idempotency_key=f"run:{run.pk}:0:0:0")
    assert action.outcome == "allowed" and not nothing_held()
    run_cancel(run=run, by=personas["security"], reason="stop")
    action.refresh_from_db()
    assert action.status == "cancelled" and nothing_held()


@pytest.mark.parametrize("program,reason", [("ask", "permitted by policy all"),
                                            ("careful", "policy gpt4o-needs-finance requires approval by finance")])
def test_a_run_cancelled_while_the_gate_decided_runs_nothing_and_holds_nothing(
        runner_agent, start, policy, team_budget, monkeypatch, program, reason):
    from agents.runtime import context as runtime_context
    from agents.runtime import providers

    policy("gpt4o-needs-finance", ESCALATE)
    called = []
    monkeypatch.setattr(providers, "chat", lambda **kwargs: called.append(kwargs))
    real = runtime_context.request_action

    def decided_then_cancelled(**kwargs):
        found = real(**kwargs)
        # The cancellation's first transaction commits now; its second (cancelling actions) ran before the
        # decision above was committed, so it is the worker that must not go on.
        AgentRun.objects.filter(pk=run.pk).update(status="cancelled")
        return found

    monkeypatch.setattr(runtime_context, "request_action", decided_then_cancelled)
    run = start(runner_agent(program), "hello")
    assert drive(run) == "stopped"
    action = Action.objects.get(agent=run.agent)
    assert not called and action.reasons[0] == reason  # decided as the gate decided, then closed
    assert action.reasons[-1].endswith(f"run {run.pk} was cancelled")
    if reason.startswith("permitted"):
        assert action.status == "cancelled"
    else:
        assert Approval.objects.get(action=action).status == "denied"  # withdrawn: nobody can approve it now
    assert nothing_held() and not LedgerEntry.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_cancellations_racing_a_working_run_never_deadlock_and_the_books_balance(runner_agent, start, personas,
                                                                                 team_budget):
    """A worker completing steps (on its own connection) while security cancels the run, many times over,
    at different moments: every cancel and every completion commits, and the money adds up."""
    from agents.runtime.runner import run_advance
    from agents.runtime.services import run_cancel

    agent = runner_agent("steps")
    rng = random.Random(7)
    for _ in range(12):
        run = start(agent, "30")
        problems = []

        def work():
            try:
                for _ in range(40):
                    if run_advance(run.pk) != "again":
                        break
            except Exception as error:  # noqa: BLE001 - reported below
                problems.append(error)
            finally:
                connection.close()

        worker = threading.Thread(target=work)
        worker.start()
        threading.Event().wait(rng.uniform(0.0, 0.15))
        try:
            run_cancel(run=run, by=personas["security"], reason="race")
        except Exception as error:  # noqa: BLE001 - reported below (a Conflict if it finished first is fine)
            if getattr(error, "code", "") != "run_finished":
                problems.append(error)
        worker.join(60)
        assert not worker.is_alive() and not problems, problems
    actions = Action.objects.filter(agent=agent)
    assert not actions.filter(status="decided", outcome="allowed").exists()
    assert nothing_held()
    ledger = LedgerEntry.objects.aggregate(total=Sum("cost_micros"))["total"] or 0
    assert ledger == (actions.aggregate(total=Sum("actual_cost_micros"))["total"] or 0)
    assert ledger == AgentRun.objects.filter(agent=agent).aggregate(total=Sum("cost_micros"))["total"]
    assert verify().ok


def test_an_agent_cannot_take_over_or_complete_its_runs_actions_over_the_api(runner_agent, agent_client):
    from governance.gate import request_action

    agent = runner_agent("ask")
    client = agent_client(agent)
    taken = client.post("/api/v1/actions/", {"action": "llm.call", "resource": "gpt-4o-mini",
                                             "idempotency_key": "run:00000000-0000-0000-0000-000000000000:0:0:0",
                                             "context": {"input_tokens": 1, "max_output_tokens": 1}}, format="json")
    assert taken.status_code == 400 and "reserved for Warden's runtime" in taken.content.decode()
    action = request_action(agent=agent, action="llm.call", resource="gpt-4o-mini",
                            context={"input_tokens": 10, "max_output_tokens": 50}, idempotency_key="run:x:0:0:0")
    claimed = client.post(f"/api/v1/actions/{action.pk}/complete/",
                          {"status": "succeeded", "usage": {"input_tokens": 0, "output_tokens": 0}}, format="json")
    assert claimed.status_code == 409 and claimed["Content-Type"] == "application/problem+json"
    action.refresh_from_db()
    assert action.status == "decided" and not LedgerEntry.objects.exists()
