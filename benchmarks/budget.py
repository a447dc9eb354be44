"""Reservations per second against one hot team budget (plus the org budget), 8 threads.

Each reservation is its own transaction, as the gate passes it: the number of
covering budgets and of this month's periods already open are known from the
gate's identity query (opened here before the clock starts, as the month's first
reservation would).
"""

from __future__ import annotations

import threading
import time
import uuid

from django.db import connection, transaction
from django.utils import timezone

from billing import services
from billing.models import Budget, BudgetPeriod
from governance.models import Action


def run(report, agents, *, threads: int = 8, per_thread: int = 400) -> None:
    report(f"== Budget reservations: {threads} threads, one hot team budget + the organisation budget ==")
    hot = [a for a in agents if a.team_id == agents[0].team_id]
    finance = agents[0].owner
    team_budget = services.budget_create(scope="team", team=agents[0].team, monthly_limit_micros=10**12, by=finance)
    services.budget_create(scope="organisation", monthly_limit_micros=10**12, by=finance)
    now = timezone.now()
    for budget in (team_budget, Budget.objects.get(scope="organisation")):  # this month, opened
        BudgetPeriod.objects.get_or_create(budget=budget, period_start=services.period_start(now))
    total = threads * per_thread
    ids = [uuid.uuid4() for _ in range(total)]
    Action.objects.bulk_create([
        Action(id=i, agent=hot[n % len(hot)], action="llm.call", resource="model-01", request_digest="bench",
               outcome="allowed", created_at=now)
        for n, i in enumerate(ids)
    ], batch_size=1000)
    barrier = threading.Barrier(threads + 1)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            k = n * per_thread + i
            with transaction.atomic():
                services.reserve(agent=hot[k % len(hot)], action_id=ids[k], micros=1_000, covering=2, open_=2)
        connection.close()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    period = BudgetPeriod.objects.get(budget=team_budget)
    from benchmarks import results

    results.add("budget", "reservations/s on one hot team budget (billing.reserve), 8 threads", total / elapsed, "/s",
                at_least=1000)
    report(f"{total} reservations in {elapsed:.2f} s = {total / elapsed:.0f}/s; team budget reserved "
           f"{period.reserved_micros} micro-dollars (expected {total * 1_000})")
