"""`make bench BENCH=soak`: everything at once for a few minutes, then count what must add up.

The demo fleet runs on a real Celery worker (its programs, the simulated model provider), agents of the bench
fleet ask the gate over REST and complete their calls, and others call models through the OpenAI-compatible
gateway with the official `openai` client, all against one uvicorn web process group. Bounded by
WARDEN_SOAK_SECONDS (default 120); everything it starts, it stops.

Reported: decisions by transport, lost events (decisions without their audit event, completions without
theirs, chain breaks: must be 0), ledger == spend (the organisation's budget, which covers everyone: its
period's spent equals the ledger's costs, and nothing is left reserved), and the resident memory of the web
processes and the worker at start and at end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from benchmarks import results
from benchmarks.http import wait_healthy

ROOT = Path(__file__).resolve().parent.parent


def _rss_mib(group: int) -> float:
    """Resident memory of every process in a process group, MiB (from /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError, ValueError):
            continue
    return total / 1024


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(report, agents, secrets, *, seconds: int | None = None) -> dict:
    import openai
    from django.contrib.auth import get_user_model
    from django.db.models import Sum

    from agents.demo import demo_fleet_ensure
    from agents.models import Agent, AgentRun
    from agents.runtime.services import run_start
    from audit.models import AuditEvent
    from audit.verify import verify
    from billing.models import Budget, BudgetPeriod, LedgerEntry
    from billing.services import budget_create
    from governance.models import Action
    from governance.services import demo_users_ensure
    from tests.runtime.cluster import PrivateRedis, free_port

    seconds = seconds or int(os.environ.get("WARDEN_SOAK_SECONDS", "120"))
    report(f"== Soak: demo fleet on a worker + REST + gateway traffic for {seconds} s ==")
    demo_users_ensure(password="soak-" + os.urandom(6).hex())
    demo_fleet_ensure(owner_username="admin")
    finance = get_user_model().objects.get(username="finance")
    if not Budget.objects.filter(scope="organisation").exists():
        budget_create(scope="organisation", monthly_limit_micros=10**12, by=finance)
    org = Budget.objects.get(scope="organisation")  # it covers every agent: its spend is the whole ledger

    from django.utils import timezone

    soak_started_at = timezone.now()  # everything counted below is what the soak did, not earlier sections
    period = BudgetPeriod.objects.filter(budget=org).order_by("-period_start").first()
    spent_before = period.spent_micros if period else 0
    ledger_before = LedgerEntry.objects.aggregate(total=Sum("cost_micros"))["total"] or 0
    broker = PrivateRedis(ROOT / "var" / "soak-broker")
    broker.start()
    port = free_port()
    env = dict(os.environ, WARDEN_LOG_LEVEL="WARNING", WARDEN_BROKER_URL=broker.url,
               WARDEN_LLM_UPSTREAMS='{"*": "simulated"}', WARDEN_SIMULATED_LATENCY_MS="50",
               WARDEN_SIMULATED_INVALID_PERCENT="0", WARDEN_DEMO_TRAFFIC="0")
    base = f"http://127.0.0.1:{port}"
    from governance.celery import app

    previous_broker = app.conf.broker_url
    app.conf.broker_url = broker.url  # runs started here go to the soak's worker
    stop = threading.Event()
    counts: Counter = Counter()
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            counts[name] += 1

    def rest(secret: str) -> None:
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        while not stop.is_set():
            body = {"action": "llm.call", "resource": "model-03", "context": {"input_tokens": 400,
                                                                            "max_output_tokens": 100}}
            try:
                request = urllib.request.Request(f"{base}/api/v1/actions/", json.dumps(body).encode(), headers)
                with urllib.request.urlopen(request, timeout=30) as answer:
                    decided = json.loads(answer.read())
                count(f"rest {decided['outcome']}")
                if decided["outcome"] == "allowed":
                    done = {"status": "succeeded", "usage": {"input_tokens": 380, "output_tokens": 90}}
                    urllib.request.urlopen(urllib.request.Request(
                        f"{base}/api/v1/actions/{decided['id']}/complete/", json.dumps(done).encode(), headers),
                        timeout=30).read()
            except Exception as error:  # noqa: BLE001 - counted and shown
                count(f"rest error {type(error).__name__}")

    def gateway(secret: str) -> None:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=30)
        while not stop.is_set():
            try:
                client.chat.completions.create(model="model-05", max_tokens=40,
                                               messages=[{"role": "user", "content": "one line on soak tests"}])
                count("gateway answered")
            except openai.APIStatusError as error:
                count(f"gateway {error.status_code}")
            except Exception as error:  # noqa: BLE001
                count(f"gateway error {type(error).__name__}")

    def fleet() -> None:
        """Keep every demo agent that has a program running, one run at a time each."""
        from django.db import connection

        from agents.demo import PROGRAMS

        runnable = list(Agent.objects.filter(program__startswith=PROGRAMS, status="active"))
        while not stop.is_set():
            for agent in runnable:
                if not AgentRun.objects.filter(agent=agent, status__in=("queued", "running", "waiting")).exists():
                    try:
                        run_start(agent=agent, objective="soak: the usual work", by=finance)
                        count("runs started")
                    except Exception as error:  # noqa: BLE001
                        count(f"run not started {type(error).__name__}")
            stop.wait(2)
        connection.close()

    web = worker = None
    try:
        web = _spawn(["-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                      "--workers", str(os.cpu_count() or 2), "--no-access-log", "--log-level", "warning"],
                     env, ROOT / "var" / "soak-web.log")
        worker = _spawn(["-m", "celery", "-A", "governance", "worker", "--concurrency", "2", "--loglevel",
                         "WARNING", "-n", "soak@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                        env, ROOT / "var" / "soak-worker.log")
        wait_healthy(base, 90)
        time.sleep(3)  # the worker connects
        memory_start = {"web": _rss_mib(web.pid), "worker": _rss_mib(worker.pid)}
        threads = [threading.Thread(target=rest, args=(secrets[i],), daemon=True) for i in range(8, 12)]
        threads += [threading.Thread(target=gateway, args=(secrets[i],), daemon=True) for i in range(12, 14)]
        threads.append(threading.Thread(target=fleet, daemon=True))
        started = time.monotonic()
        for thread in threads:
            thread.start()
        stop.wait(seconds)
        stop.set()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        # Let the runs under way finish their steps (a few seconds), then stop what is left.
        settle = time.monotonic() + 60
        while AgentRun.objects.filter(status__in=("queued", "running")).exists() and time.monotonic() < settle:
            time.sleep(1)
        memory_end = {"web": _rss_mib(web.pid), "worker": _rss_mib(worker.pid)}
    finally:
        stop.set()
        app.conf.broker_url = previous_broker
        for process in (web, worker):
            if process is not None:
                _stop(process)
        broker.stop()

    during = Action.objects.filter(created_at__gte=soak_started_at)
    decisions = during.count()
    by_transport = Counter()
    for name, number in counts.items():
        by_transport[name] = number
    decided_events = set(AuditEvent.objects.filter(payload__has_key="action_id", action__startswith="gate.",
                                                   outcome__in=("allowed", "denied", "pending_approval"))
                         .values_list("payload__action_id", flat=True))
    actions = set(str(pk) for pk in during.values_list("pk", flat=True))
    without_event = len(actions - decided_events)
    completed = set(str(pk) for pk in during.exclude(completed_at=None).values_list("pk", flat=True))
    completion_events = set(AuditEvent.objects.filter(action="gate.complete")
                            .values_list("payload__action_id", flat=True))
    without_completion = len(completed - completion_events)
    chain = verify()
    lost = without_event + without_completion + len(chain.problems)
    period = BudgetPeriod.objects.filter(budget=org).order_by("-period_start").first()
    spent = (period.spent_micros if period else 0) - spent_before  # what the soak added, both sides
    ledger = (LedgerEntry.objects.aggregate(total=Sum("cost_micros"))["total"] or 0) - ledger_before
    open_lines = during.filter(status="decided", outcome="allowed").aggregate(
        total=Sum("reserved_micros"))["total"] or 0
    report(f"{decisions:,} decisions in {elapsed:.0f} s ({decisions / elapsed:,.0f}/s): "
           + ", ".join(f"{name} {number:,}" for name, number in sorted(by_transport.items())))
    report(f"lost events: {lost} (decisions without their event {without_event}, completions without theirs "
           f"{without_completion}, chain problems {len(chain.problems)}; {chain.events_checked:,} events checked)")
    report(f"ledger == spend, during the soak: organisation budget spent {spent:,} µ$, ledger {ledger:,} µ$ "
           f"({'equal' if spent == ledger else 'NOT EQUAL'}); reserved now {period.reserved_micros:,} µ$ "
           f"for {open_lines:,} µ$ of the soak's allowed calls not completed")
    report(f"memory (RSS): web {memory_start['web']:.0f} -> {memory_end['web']:.0f} MiB, "
           f"worker {memory_start['worker']:.0f} -> {memory_end['worker']:.0f} MiB")
    results.add("soak", "decisions during the soak", decisions, "")
    results.add("soak", "lost events", lost, "", at_most=0)
    results.add("soak", "ledger minus budget spend (absolute)", abs(ledger - spent), "µ$", at_most=0)
    results.add("soak", "web processes' memory growth", memory_end["web"] - memory_start["web"], "MiB")
    results.add("soak", "worker's memory growth", memory_end["worker"] - memory_start["worker"], "MiB")
    return {"decisions": decisions, "lost": lost}
