"""Nothing lost, nothing done twice: real workers killed mid-run, Redis stopped mid-run.

Real `celery worker` and `celery beat` processes, the real PostgreSQL (the test database, as the
application role) and a real Redis; a local server speaking the OpenAI protocol counts every call by the
Action it was made for.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from django.db.models import Sum

from agents.models import AgentRun, RunStep
from audit.verify import verify
from billing.models import BudgetPeriod, LedgerEntry
from governance.models import Action

from .cluster import Cluster, PrivateRedis, app_database_url, broker, wait_until
from .fake_openai import fake_openai

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = 8


@pytest.fixture
def upstream():
    with fake_openai() as fake:
        fake.delay = 0.25  # long enough for a kill to land inside a step
        yield fake


@pytest.fixture
def cluster(tmp_path, upstream, runtime_settings):
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    env = {
        **os.environ,
        "DATABASE_URL": app_database_url(),
        "WARDEN_APP_DATABASE_URL": "",
        "REDIS_URL": redis.url,
        "WARDEN_AGENT_PROGRAMS": ",".join(runtime_settings.WARDEN_AGENT_PROGRAMS),
        "WARDEN_LLM_UPSTREAMS": json.dumps({"*": {"base_url": upstream.url, "timeout": 5, "max_retries": 1}}),
        "WARDEN_LLM_TIMEOUT": "5",
        "WARDEN_LLM_MAX_RETRIES": "1",
        "WARDEN_RUN_TASK_SECONDS": "5",
        "WARDEN_RUN_STEPS_PER_TASK": "2",  # every run is handed from task to task: messages in flight all along
        "WARDEN_TASK_SOFT_TIME_LIMIT": "40",
        "WARDEN_TASK_TIME_LIMIT": "50",
        "WARDEN_TASK_VISIBILITY_TIMEOUT": "60",
        "WARDEN_RUN_RECOVERY_SECONDS": "1",
        "WARDEN_RUN_STALL_SECONDS": "2",
        "WARDEN_RUN_SCHEDULE_SECONDS": "3600",
        "WARDEN_DEMO_TRAFFIC": "0",
        "WARDEN_LOG_LEVEL": "INFO",
    }
    group = Cluster(tmp=tmp_path, redis=redis, env=env)
    try:
        with broker(redis.url):
            yield group
    finally:
        group.stop()
        redis.stop()


@pytest.fixture
def fleet(runner_agent, personas, team):
    from billing.services import budget_create

    budget_create(scope="team", team=team, monthly_limit_micros=100_000_000, by=personas["finance"])
    return [runner_agent("steps", name=f"worker-bee-{n}") for n in range(3)]


def start_runs(fleet, personas, per_agent: int) -> list[AgentRun]:
    from agents.runtime.services import run_start

    return [run_start(agent=agent, objective=str(STEPS), by=personas["admin"])
            for agent in fleet for _ in range(per_agent)]


def succeeded_steps() -> int:
    return RunStep.objects.filter(status="succeeded").count()


def all_final(runs) -> bool:
    return not AgentRun.objects.filter(pk__in=[run.pk for run in runs], status__in=["queued", "running",
                                                                                    "waiting_approval"]).exists()


def assert_books_balance(runs) -> None:
    """Every step ran under one completed Action; nothing is held; ledger, budgets, runs and actions agree."""
    for run in runs:
        run.refresh_from_db()
        assert run.status == "succeeded", (run.pk, run.status, run.error)
        assert run.result["steps"] == STEPS
    steps = RunStep.objects.filter(run__in=runs)
    assert steps.count() == len(runs) * STEPS
    assert steps.exclude(status="succeeded").count() == 0
    assert len(set(steps.values_list("action_id", flat=True))) == steps.count()
    actions = Action.objects.filter(agent__in={run.agent_id for run in runs})
    assert actions.count() == steps.count()
    assert not actions.exclude(status="succeeded").exists()  # none left open, none cancelled or expired
    assert BudgetPeriod.objects.aggregate(total=Sum("reserved_micros"))["total"] == 0
    ledger = LedgerEntry.objects.aggregate(total=Sum("cost_micros"))["total"]
    assert LedgerEntry.objects.count() == steps.count()
    assert ledger == actions.aggregate(total=Sum("actual_cost_micros"))["total"]
    assert ledger == sum(run.cost_micros for run in runs)
    assert ledger == BudgetPeriod.objects.get(budget__scope="team").spent_micros
    assert verify().ok


def completed_calls(upstream) -> dict[str, int]:
    """For every step completed so far, how many times its Action's model call reached the upstream."""
    calls = upstream.per_action()
    return {str(action): calls[str(action)]
            for action in RunStep.objects.filter(status="succeeded").values_list("action_id", flat=True)}


def test_killing_workers_mid_run_loses_nothing_and_repeats_no_completed_step(cluster, fleet, personas, upstream):
    first = cluster.worker("first")
    runs = start_runs(fleet, personas, per_agent=2)  # 6 runs of 8 steps, 2 at a time

    wait_until(lambda: succeeded_steps() >= 8, timeout=60, message="no progress", logs=cluster.logs)
    before_pool_kill = completed_calls(upstream)
    killed = cluster.kill_pool(first)  # its pool processes die mid-step; the main process hands their tasks back
    assert killed

    wait_until(lambda: succeeded_steps() >= 20, timeout=60, message="no progress after the pool was killed",
               logs=cluster.logs)
    before_worker_kill = completed_calls(upstream)
    cluster.kill_all(first)  # the whole worker dies: its tasks are neither done nor handed back
    cluster.worker("second")
    cluster.beat()  # the recovery sweep sends again what no live worker holds

    wait_until(lambda: all_final(runs), timeout=90, message="runs did not finish", logs=cluster.logs)
    calls = upstream.per_action()
    # A step once completed never ran again: its count of calls is what it was when it completed.
    assert {action: calls[action] for action in before_pool_kill} == before_pool_kill
    assert {action: calls[action] for action in before_worker_kill} == before_worker_kill
    assert set(before_pool_kill.values()) == {1}  # nothing had been killed yet
    # A step in flight when its process died ran again (at least once: the price of not losing it). Each kill
    # interrupts at most the steps its processes had in flight (2, then 2), and one step may be hit by both.
    extra = {action: count - 1 for action, count in calls.items() if count > 1}
    assert all(count <= 2 for count in extra.values()) and sum(extra.values()) <= 4, extra
    assert sum(calls.values()) == len(runs) * STEPS + sum(extra.values())
    assert_books_balance(runs)
    assert max(run.deliveries for run in AgentRun.objects.filter(pk__in=[r.pk for r in runs])) >= 2


def test_redis_stopped_and_started_again_mid_run_loses_nothing(cluster, fleet, personas, upstream):
    cluster.worker("only")
    cluster.beat()
    runs = start_runs(fleet, personas, per_agent=2)  # more runs than the worker takes: messages wait in Redis

    wait_until(lambda: succeeded_steps() >= 5, timeout=60, message="no progress", logs=cluster.logs)
    cluster.redis.stop()  # queued messages, the channel layer and the cache go with it (no persistence)
    stopped_at = succeeded_steps()
    time.sleep(2)
    cluster.redis.start()

    wait_until(lambda: all_final(runs), timeout=90, message="runs did not finish after Redis came back",
               logs=cluster.logs)
    assert succeeded_steps() > stopped_at
    calls = upstream.per_action()
    assert max(calls.values()) <= 2 and sum(calls.values()) <= len(runs) * STEPS + 2  # + those in flight
    assert_books_balance(runs)
    # Messages queued when Redis stopped were lost with it: the recovery sweep sent those runs on.
    resent = re.findall(r"recovery sweep sent (\d+) run", cluster.logs(chars=None))
    assert sum(map(int, resent)) >= 1, cluster.logs()
