"""The kill switch, the sweep, completions and the gate, all at once, on separate connections."""

from __future__ import annotations

import random
import threading
import time

import pytest
from django.db import connection
from django.db.models import Sum

from agents.models import Agent
from audit.verify import verify
from billing import services as billing
from billing.models import Budget, BudgetPeriod, LedgerEntry, ReservationLine
from governance.gate import actions_expire, complete_action, request_action
from governance.models import Action

SMALL = {"input_tokens": 1000, "max_output_tokens": 1000}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("withdraw", ["suspend", "revoke the key"])
def test_a_decision_in_flight_when_the_identity_is_withdrawn_is_not_left_allowed(make_agent, policy, prices, personas,
                                                                               monkeypatch, withdraw):
    """The decision read the agent and its key as usable, then the kill switch (or a key revocation)
    committed before it wrote anything."""
    from agents.services import agent_key_issue, agent_key_revoke, agent_suspend

    policy("all", "permit(principal, action, resource);")
    agent = make_agent("racer", allowed_models=["gpt-4o-mini"])
    key, _ = agent_key_issue(agent=agent, by=personas["admin"])
    team_budget = billing.budget_create(scope="team", team=agent.team, monthly_limit_micros=10**9, by=personas["finance"])
    reached, go, outcome = threading.Event(), threading.Event(), {}
    estimate = billing.estimate_cost

    def paused(**kwargs):  # called after the gate read the agent's status, before it reserves or writes
        if threading.current_thread().name == "decider" and not reached.is_set():
            reached.set()
            assert go.wait(10)
        return estimate(**kwargs)

    monkeypatch.setattr(billing, "estimate_cost", paused)

    def decide():
        try:
            outcome["action"] = request_action(agent=agent, key=key, action="llm.call", resource="gpt-4o-mini",
                                               context=SMALL)
        except Exception as exc:  # asserted below
            outcome["error"] = exc
        finally:
            connection.close()

    decider = threading.Thread(target=decide, name="decider")
    decider.start()
    assert reached.wait(10)
    if withdraw == "suspend":
        agent_suspend(agent=agent, by=personas["security"], reason="pulled mid-decision")
    else:
        agent_key_revoke(key=key, by=personas["admin"], reason="leaked")
    go.set()
    decider.join(20)
    assert "error" not in outcome, outcome
    assert outcome["action"].outcome == "denied"
    assert ("racer is suspended: pulled mid-decision" if withdraw == "suspend" else "the agent key is revoked") \
        in outcome["action"].reasons[0]
    assert not Action.objects.filter(agent=agent, outcome="allowed").exists()
    assert not BudgetPeriod.objects.filter(budget=team_budget, reserved_micros__gt=0).exists()
    assert verify().ok


WORKERS = 6
ROUNDS = 25


@pytest.mark.django_db(transaction=True)
def test_the_sweep_the_kill_switch_completions_and_the_gate_never_deadlock(make_agent, policy, prices, personas):
    """Every lock is taken in one order (actions, budget periods, chain heads): no deadlock, exact money."""
    from agents.models import Team
    from agents.services import agent_resume, agent_suspend

    policy("all", "permit(principal, action, resource);")
    other_team = Team.objects.create(name="ops", display_name="Ops")
    agents = [make_agent(f"worker-{n}", allowed_models=["gpt-4o-mini"]) for n in range(4)]
    Agent.objects.filter(pk__in=[a.pk for a in agents[2:]]).update(team=other_team)
    agents = list(Agent.objects.filter(pk__in=[a.pk for a in agents]).order_by("name"))
    finance = personas["finance"]
    billing.budget_create(scope="organisation", monthly_limit_micros=10**11, by=finance)
    for team in {a.team for a in agents}:
        billing.budget_create(scope="team", team=team, monthly_limit_micros=10**10, by=finance)
    for agent in agents:
        billing.budget_create(scope="agent", agent=agent, monthly_limit_micros=10**9, by=finance)
    errors: list[BaseException] = []
    running = threading.Event()
    running.set()

    def guarded(work):
        def run(*args):
            try:
                work(*args)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)
            finally:
                connection.close()
        return run

    @guarded
    def gate_worker(n: int) -> None:
        rnd = random.Random(n)
        for _ in range(ROUNDS):
            action = request_action(agent=agents[n % len(agents)], action="llm.call", resource="gpt-4o-mini",
                                    context=SMALL)
            if action.outcome == "allowed" and rnd.random() < 0.6:
                complete_action(action=action, status="succeeded", usage_source="provider",
                                usage={"input_tokens": rnd.randrange(0, 2000), "output_tokens": rnd.randrange(0, 1001)})

    @guarded
    def sweeper() -> None:
        while running.is_set():
            actions_expire(older_than=__import__("datetime").timedelta(0))
            time.sleep(0.005)

    @guarded
    def kill_switch() -> None:
        victim = agents[0]
        while running.is_set():
            agent_suspend(agent=victim, by=personas["security"], reason="drill")
            agent_resume(agent=victim, by=personas["admin"])

    workers = [threading.Thread(target=gate_worker, args=(n,)) for n in range(WORKERS)]
    others = [threading.Thread(target=sweeper) for _ in range(2)] + [threading.Thread(target=kill_switch)]
    for thread in workers + others:
        thread.start()
    for thread in workers:
        thread.join(120)
    running.clear()
    for thread in others:
        thread.join(60)
    assert errors == [], errors[:3]

    assert Action.objects.filter(action="llm.call").count() == WORKERS * ROUNDS
    assert Action.objects.filter(status="cancelled").exists() or Action.objects.filter(status="expired").exists()
    # Every budget period holds exactly its open reservations and exactly the spend of the agents it covers.
    for period in BudgetPeriod.objects.select_related("budget"):
        open_lines = ReservationLine.objects.filter(period=period, settled_at__isnull=True).aggregate(s=Sum("micros"))["s"]
        assert period.reserved_micros == (open_lines or 0), period.budget.label
        assert period.spent_micros == _ledger_total(period.budget), period.budget.label
    actions_expire(older_than=__import__("datetime").timedelta(0))
    assert not BudgetPeriod.objects.exclude(reserved_micros=0).exists()
    assert verify().ok


def _ledger_total(budget: Budget) -> int:
    entries = LedgerEntry.objects.all()
    if budget.scope == "team":
        entries = entries.filter(agent__team=budget.team)
    elif budget.scope == "agent":
        entries = entries.filter(agent=budget.agent)
    return entries.aggregate(s=Sum("cost_micros"))["s"] or 0
