"""POST /api/v1/actions/ over HTTP with wrk, beside a bare authenticated DRF endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, seconds: float = 60) -> None:
    """Until the server at `base` answers /healthz (or `seconds` pass: the measurement then shows why)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.2)


def _wrk(url: str, script: str, connections: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", "-s", handle.name, url],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    os.unlink(handle.name)

    def ms(label):
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": ms("50"), "p99": ms("99"), "non2xx": int(errors.group(1)) if errors else 0}


def _cpu_seconds(web_group: int) -> dict[str, float]:
    """CPU seconds used so far by the web server (its process group: uvicorn and its workers), by PostgreSQL's
    processes, and by finished children of this process (wrk), from /proc: where a 2-core box's time goes."""
    import resource

    tick = os.sysconf("SC_CLK_TCK")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = {"web": 0.0, "postgres": 0.0, "wrk": children.ru_utime + children.ru_stime}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if int(fields[2]) == web_group:
            used["web"] += seconds
        elif name.startswith("postgres"):
            used["postgres"] += seconds
    return used


def _measured(url: str, script: str, connections: int, seconds: int, web_group: int) -> dict:
    """wrk's figures, and the CPU milliseconds each party spent per request meanwhile."""
    before = _cpu_seconds(web_group)
    figures = _wrk(url, script, connections, seconds)
    after = _cpu_seconds(web_group)
    requests = max(1.0, figures["rps"] * seconds)
    figures["cpu_ms"] = {name: (after[name] - before[name]) * 1000 / requests for name in after}
    return figures


def _cpu_line(figures: dict) -> str:
    cpu = figures["cpu_ms"]
    total = sum(cpu.values())
    cores = os.cpu_count() or 1
    return (f"CPU per request: web {cpu['web']:.1f} ms, PostgreSQL {cpu['postgres']:.1f} ms, wrk {cpu['wrk']:.1f} ms "
            f"= {total:.1f} ms: {cores} cores allow ~{cores * 1000 / total:.0f} req/s")


def propagation(base: str, secret: str, body: str) -> str:
    """Publish a forbid-all policy and time until the served decisions change, across workers."""
    from governance.models import Policy
    from governance.services import policy_create, policy_set_enabled
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.get(username="bench-admin")

    def outcome() -> str:
        request = urllib.request.Request(base + "/api/v1/actions/", data=body.encode(), method="POST",
                                         headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())["outcome"]

    before = outcome()
    published = time.perf_counter()
    policy_create(name="bench-stop-everything", body="forbid(principal, action, resource);", by=admin, reason="bench")
    stale = 0
    while outcome() != "denied":
        stale += 1
    elapsed = (time.perf_counter() - published) * 1000
    later = [outcome() for _ in range(20)]  # every worker process must agree now
    policy_set_enabled(policy=Policy.objects.get(name="bench-stop-everything"), enabled=False, by=admin, reason="bench")
    return (f"policy change propagation: before {before}; first denial {elapsed:.0f} ms after publish "
            f"(including compiling the 2,005-policy set), {stale} stale answers, next 20 answers across workers: "
            f"{later.count('denied')}/20 denied")


def run(report, secret: str, *, workers: int = 2, connections: int = 16, seconds: int = 10) -> dict:
    report(f"== HTTP: {connections} concurrent clients (wrk), uvicorn with {workers} workers, 127.0.0.1 ==")
    if shutil.which("wrk") is None:
        report("wrk is not installed (make bench installs it): skipped")
        return {}
    from tests.runtime.fake_openai import fake_openai

    upstream_context = fake_openai()
    upstream = upstream_context.__enter__()  # the gateway's upstream: a local server speaking the protocol
    port = _free_port()
    env = dict(os.environ, WARDEN_LOG_LEVEL="WARNING",
               WARDEN_LLM_UPSTREAMS=json.dumps({"*": {"base_url": upstream.url, "api_key": "bench", "timeout": 10}}))
    log = open(ROOT / "var" / "bench-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base)
        header = f'wrk.headers["Authorization"] = "Bearer {secret}"\nwrk.headers["Content-Type"] = "application/json"\n'
        bare = header + 'wrk.method = "GET"\n'
        body = json.dumps({"action": "llm.call", "resource": "model-03",
                           "context": {"input_tokens": 800, "max_output_tokens": 200, "estimated_cost_micros": 1500}})
        gate = header + f"wrk.method = \"POST\"\nwrk.body = {json.dumps(body)}\n"
        _wrk(base + "/api/v1/agents/me/", bare, connections, 2)  # warm up both paths
        _wrk(base + "/api/v1/actions/", gate, connections, 2)
        ceiling = _measured(base + "/api/v1/agents/me/", bare, connections, seconds, server.pid)
        actions = _measured(base + "/api/v1/actions/", gate, connections, seconds, server.pid)
        report(f"bare authenticated DRF endpoint (GET /api/v1/agents/me/): {ceiling['rps']:.0f} req/s, "
               f"p50 {ceiling['p50']:.1f} ms, p99 {ceiling['p99']:.1f} ms, non-2xx {ceiling['non2xx']}; "
               + _cpu_line(ceiling))
        report(f"POST /api/v1/actions/ (the gate):                     {actions['rps']:.0f} req/s, "
               f"p50 {actions['p50']:.1f} ms, p99 {actions['p99']:.1f} ms, non-2xx {actions['non2xx']} "
               f"= {actions['rps'] / ceiling['rps'] * 100:.0f}% of the bare endpoint (target >= 80%); "
               + _cpu_line(actions))
        report(propagation(base, secret, body))
        report(approval_wake(base, secret))
        report(gateway_overhead(base, secret, upstream.url))
        from benchmarks import results

        results.add("http", "bare authenticated endpoint, 16 clients", ceiling["rps"], "req/s")
        results.add("http", "POST /api/v1/actions/, 16 clients", actions["rps"], "req/s")
        results.add("http", "POST /api/v1/actions/ as a share of the bare endpoint", actions["rps"] / ceiling["rps"] * 100,
                    "%", at_least=80)
        return {"ceiling": ceiling, "actions": actions, "base": base}
    finally:
        upstream_context.__exit__(None, None, None)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def approval_wake(base: str, secret: str, *, rounds: int = 10) -> str:
    """An agent long-polls an escalated action; finance approves: how long until the agent has its answer."""
    import threading

    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from governance.approvals import approval_decide
    from governance.models import Approval

    finance, _ = get_user_model().objects.get_or_create(username="bench-finance")
    Group.objects.get(name="finance").user_set.add(finance)
    body = json.dumps({"action": "llm.call", "resource": "model-05",
                       "context": {"input_tokens": 1_000_000, "max_output_tokens": 100_000, "purpose": "bench"}})
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    def call(path: str, data: bytes | None = None, timeout: float = 5) -> dict:
        request = urllib.request.Request(base + path, data=data, method="POST" if data else "GET", headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    waits, outcomes = [], []
    for _ in range(rounds):
        asked = call("/api/v1/actions/", body.encode())
        if asked["outcome"] != "pending_approval":
            return f"approval long-poll: the request was {asked['outcome']}, not escalated; skipped"
        answer: dict = {}

        def wait() -> None:
            answer["body"] = call(f"/api/v1/actions/{asked['id']}/?wait=30", timeout=40)
            answer["at"] = time.perf_counter()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)  # the agent is waiting
        approval_decide(approval=Approval.objects.get(pk=asked["approval"]["id"]), by=finance, verdict="approve")
        decided = time.perf_counter()  # committed
        waiter.join(40)
        waits.append((answer["at"] - decided) * 1000)
        outcomes.append(answer["body"]["outcome"])
    waits.sort()
    return (f"approval long-poll (GET /actions/{{id}}/?wait=30, {rounds} rounds): answered {waits[len(waits) // 2]:.0f} ms "
            f"(p50), {waits[-1]:.0f} ms (max) after finance's decision committed [target < 1000 ms]; "
            f"outcomes {sorted(set(outcomes))}")


def gateway_overhead(base: str, secret: str, upstream_url: str, *, rounds: int = 200) -> str:
    """The same chat completion sent straight to the (local, instant) upstream and through Warden's gateway,
    one after another, alternating: what the gate, the reservation, the settlement and the audit add."""
    import httpx

    body = {"model": "model-03", "max_tokens": 50, "messages": [{"role": "user", "content": "Summarise the ticket"}]}
    direct, through, failures = [], [], 0
    with httpx.Client(timeout=30) as client:
        for number in range(rounds + 20):
            started = time.perf_counter()
            client.post(upstream_url + "/chat/completions", json=body, headers={"Authorization": "Bearer bench"})
            middle = time.perf_counter()
            answer = client.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"})
            ended = time.perf_counter()
            if number < 20:
                continue  # warm-up
            failures += answer.status_code != 200
            direct.append((middle - started) * 1000)
            through.append((ended - middle) * 1000)
    direct.sort()
    through.sort()

    def pct(values, q):
        return values[min(len(values) - 1, int(len(values) * q))]

    from benchmarks import results

    results.add("http", "gateway overhead over a direct call, p50", pct(through, .5) - pct(direct, .5), "ms", at_most=3)
    results.add("http", "gateway overhead over a direct call, p99", pct(through, .99) - pct(direct, .99), "ms",
                at_most=15)

    return (f"gateway (POST /v1/chat/completions, {rounds} calls one at a time, instant local upstream): direct "
            f"p50 {pct(direct, .5):.1f} ms p99 {pct(direct, .99):.1f} ms; through Warden p50 {pct(through, .5):.1f} ms "
            f"p99 {pct(through, .99):.1f} ms; Warden adds {pct(through, .5) - pct(direct, .5):.1f} ms p50, "
            f"{pct(through, .99) - pct(direct, .99):.1f} ms p99 (target <= 3 ms p50, <= 15 ms p99); non-200 {failures}")


def processes(report, secret: str, *, many: int, connections: int = 16, seconds: int = 10) -> None:
    """POST /api/v1/actions/ with 1 web process and with `many` (make run's default: one per core), in one run."""
    report(f"== HTTP: the gate with 1 and with {many} web processes ({connections} clients, wrk) ==")
    if shutil.which("wrk") is None:
        report("wrk is not installed (make bench installs it): skipped")
        return
    body = json.dumps({"action": "llm.call", "resource": "model-05",
                       "context": {"input_tokens": 800, "max_output_tokens": 200, "estimated_cost_micros": 1500}})
    script = (f'wrk.headers["Authorization"] = "Bearer {secret}"\nwrk.headers["Content-Type"] = "application/json"\n'
              f"wrk.method = \"POST\"\nwrk.body = {json.dumps(body)}\n")
    figures = {}
    for workers in (1, many):
        port = _free_port()
        log = open(ROOT / "var" / f"bench-server-{workers}.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1", "--port",
             str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
            cwd=ROOT, env=dict(os.environ, WARDEN_LOG_LEVEL="WARNING"), start_new_session=True, stdout=log,
            stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base)
            _wrk(base + "/api/v1/actions/", script, connections, 2)  # warm every process
            figures[workers] = _measured(base + "/api/v1/actions/", script, connections, seconds, server.pid)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
            log.close()
    one, all_ = figures[1], figures[many]
    from benchmarks import results

    results.add("http", f"POST /api/v1/actions/ with {many} web processes against 1", all_["rps"] / one["rps"], "x",
                at_least=1.6)
    report(f"1 process: {one['rps']:.0f} req/s (p50 {one['p50']:.1f} ms); {many} processes: {all_['rps']:.0f} req/s "
           f"(p50 {all_['p50']:.1f} ms) = {all_['rps'] / one['rps']:.2f}x (target >= 1.6x with 2 processes); with "
           f"{many}: " + _cpu_line(all_))
