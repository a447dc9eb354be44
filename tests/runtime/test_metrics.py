"""/metrics in multiprocess mode: two web processes and a worker (each its own process, as `make run` starts
them) write their counters to one directory, and a scrape of either web process adds them all up."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.models import AgentRun, RunStep
from governance.models import Action

from .cluster import ROOT, Cluster, PrivateRedis, app_database_url, broker, free_port, port_open, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-test-token"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text[:500]
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def total(samples, name: str, **labels) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and all((k, v) in sample_labels for k, v in labels.items()))


@pytest.fixture
def fleet(tmp_path, runtime_settings):
    """Two web processes and a worker, with one multiprocess metrics directory and a private broker."""
    queue = PrivateRedis(tmp_path / "broker")
    queue.start()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {**os.environ, "DATABASE_URL": app_database_url(), "WARDEN_APP_DATABASE_URL": "",
           "REDIS_URL": runtime_settings.REDIS_URL, "WARDEN_BROKER_URL": queue.url,
           "WARDEN_AGENT_PROGRAMS": ",".join(runtime_settings.WARDEN_AGENT_PROGRAMS),
           "WARDEN_LLM_UPSTREAMS": '{"*": "simulated"}', "WARDEN_SIMULATED_LATENCY_MS": "0",
           "WARDEN_SIMULATED_INVALID_PERCENT": "0", "WARDEN_DEMO_TRAFFIC": "0",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "WARDEN_METRICS_TOKEN": TOKEN,
           "ALLOWED_HOSTS": "127.0.0.1"}
    group = Cluster(tmp=tmp_path, redis=queue, env=env)
    webs = []
    try:
        for number in range(2):
            port = free_port()
            log = open(tmp_path / f"web{number}.log", "ab")
            webs.append((port, subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1", "--port",
                 str(port), "--no-access-log"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)))
        for port, _ in webs:
            wait_until(lambda: port_open(port), timeout=60, message="a web process did not start",
                       logs=lambda: "\n".join((tmp_path / f"web{n}.log").read_text()[-3000:] for n in range(2)))
        with broker(queue.url):
            group.worker("metrics", concurrency=1)
            yield [port for port, _ in webs], group
    finally:
        for _, process in webs:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        group.stop()
        queue.stop()


def test_counters_from_two_web_processes_and_a_worker_add_up_in_one_scrape(fleet, runner_agent, personas):
    from agents.services import agent_key_issue

    (first, second), group = fleet
    agent = runner_agent("steps")
    _, secret = agent_key_issue(agent=agent, by=agent.owner)
    key = {"Authorization": f"Bearer {secret}"}
    ask = {"action": "llm.call", "resource": "gpt-4o-mini", "context": {"input_tokens": 10, "max_output_tokens": 5}}
    for port, count in ((first, 3), (second, 2)):
        for _ in range(count):
            assert httpx.post(f"http://127.0.0.1:{port}/api/v1/actions/", json=ask, headers=key).status_code == 201
    denied = {**ask, "resource": "claude-opus"}  # not in its allowed models
    assert httpx.post(f"http://127.0.0.1:{second}/api/v1/actions/", json=denied, headers=key).json()["outcome"] \
        == "denied"
    # A run, started over the API on the first web process and carried out by the worker: its steps are judged
    # there, in the trace of the request that started it (the context travels in the task's headers).
    from governance.services import api_token_issue

    _, admin = api_token_issue(user=personas["admin"], name="metrics test")
    started = httpx.post(f"http://127.0.0.1:{first}/api/v1/agents/{agent.pk}/runs/", json={"objective": "3"},
                         headers={"Authorization": f"Bearer {admin}"})
    assert started.status_code == 201, started.text
    run = AgentRun.objects.get(pk=started.json()["id"])
    wait_until(lambda: AgentRun.objects.get(pk=run.pk).status == "succeeded", timeout=90,
               message="the worker did not finish the run", logs=group.logs)

    in_database = Action.objects.count()
    worker_steps = RunStep.objects.filter(run=run).count()
    assert in_database == 6 + worker_steps and worker_steps >= 1
    for port in (first, second):  # whichever process answers, the sums are everyone's
        samples = scrape(port)
        assert total(samples, "warden_gate_decisions_total") == in_database
        assert total(samples, "warden_gate_decisions_total", action="llm.call", outcome="denied") == 1
        assert total(samples, "warden_run_steps_total") == worker_steps
        assert total(samples, "warden_runs_ended_total", status="succeeded") == 1
        assert total(samples, "warden_gate_seconds_count") == in_database
        assert total(samples, "warden_gate_stage_seconds_count", stage="policy") == in_database
        assert total(samples, "warden_audit_events_total") >= in_database
        assert total(samples, "warden_spent_micros_total") == sum(
            Action.objects.exclude(actual_cost_micros=None).values_list("actual_cost_micros", flat=True))
        assert total(samples, "warden_runs", status="running") == 0  # read from the database at the scrape
    # One trace from the request to the worker's steps (audit events carry the trace id).
    from audit.models import AuditEvent

    start_event = AuditEvent.objects.get(action="run.start", resource=f"run:{run.pk}")
    step_events = AuditEvent.objects.filter(action="gate.llm.call", correlation_id=run.correlation_id)
    assert len(start_event.trace_id) == 32 and step_events.count() == worker_steps
    assert set(step_events.values_list("trace_id", flat=True)) == {start_event.trace_id}
    unauthorised = httpx.get(f"http://127.0.0.1:{first}/metrics", headers={"Authorization": "Bearer wrong"})
    assert unauthorised.status_code == 401 and "warden_" not in unauthorised.text
