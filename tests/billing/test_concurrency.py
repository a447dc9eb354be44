"""32 workers on separate connections race for one small budget: it never overspends."""

import random
import threading

import pytest
from django.db import connection

from billing import services
from billing.models import BudgetPeriod
from governance.gate import complete_action, request_action
from governance.models import Action

WORKERS = 32
CALLS = 6
LIMIT = 60_000  # micro-dollars; the requests below ask for about 3x that in total


@pytest.mark.django_db(transaction=True)
def test_racing_workers_never_overspend_and_are_never_wrongly_refused(make_agent, policy, prices, personas):
    policy("all", "permit(principal, action, resource);")
    agents = [make_agent(f"racer-{n:02d}", allowed_models=["gpt-4o-mini"]) for n in range(4)]
    team_budget = services.budget_create(scope="team", team=agents[0].team, monthly_limit_micros=LIMIT, by=personas["finance"])
    barrier = threading.Barrier(WORKERS)
    errors = []

    def worker(n: int) -> None:
        rnd = random.Random(n)
        try:
            barrier.wait()
            for _ in range(CALLS):
                tokens = rnd.randrange(1000, 20_000)  # 150..3000 + 600..12000 micro-dollars reserved
                action = request_action(agent=agents[n % 4], action="llm.call", resource="gpt-4o-mini",
                                        context={"input_tokens": tokens, "max_output_tokens": tokens})
                if action.outcome == "allowed" and rnd.random() < 0.7:
                    usage = {"input_tokens": tokens, "output_tokens": rnd.randrange(0, tokens + 1)}
                    complete_action(action=action, status="succeeded", usage=usage, usage_source="provider")
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    period = BudgetPeriod.objects.get(budget=team_budget)
    actions = list(Action.objects.filter(action="llm.call"))
    allowed = [a for a in actions if a.outcome == "allowed"]
    denied = [a for a in actions if a.outcome == "denied"]
    settled = [a for a in allowed if a.status == "succeeded"]
    open_ = [a for a in allowed if a.status == "decided"]
    assert len(actions) == WORKERS * CALLS
    assert denied, "the budget should have run out"
    # Never overspent, not by one micro-dollar.
    assert period.spent_micros + period.reserved_micros <= LIMIT
    # Accounted exactly.
    assert period.spent_micros == sum(a.actual_cost_micros for a in settled)
    assert period.reserved_micros == sum(a.reserved_micros for a in open_)
    # No request was refused while room remained: each denial states the locked
    # figures it saw, and they leave no room for it.
    for action in denied:
        reason = action.reasons[0]
        assert "would be exceeded" in reason
        numbers = [int(round(float(x.replace(",", "")) * 1_000_000)) for x in __import__("re").findall(r"\$([\d.,]+)", reason)]
        spent, reserved, cost, limit = numbers
        assert spent + reserved + cost > limit == LIMIT
        assert cost == action.estimated_cost_micros
