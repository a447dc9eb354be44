"""Fault drills: PostgreSQL crashes and comes back, the web process is SIGKILLed, while agents ask the gate.

Real processes throughout: Warden's web process (uvicorn, production settings) against a PostgreSQL cluster
of the drill's own (tests/drills/services.py), a private Redis, and agents sending `POST /api/v1/actions/`
from threads of this test. What must hold:

- while PostgreSQL is down the gate fails closed: every answer is a 503 problem+json, never a 500 and never
  an allowed decision; when PostgreSQL is back the gate answers again with nobody restarting anything;
- a request cut off anywhere leaves no half-written decision: every Action has its audit event and its
  reservation, the budget's counter equals its reservation lines, the chains verify, and retrying with the same
  idempotency key yields the one decision there is.

(A worker SIGKILLed mid-run and Redis stopped mid-run are drilled in tests/runtime/test_reliability.py.)
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import psycopg
import pytest

from tests.conftest import APP_ROLE
from tests.runtime.cluster import ROOT, PrivateRedis, wait_until

from .services import PrivatePostgres, Web

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"action": "llm.call", "resource": "gpt-4o-mini", "context": {"input_tokens": 1000, "max_output_tokens": 500}}
EACH = 450  # micro-dollars: 1,000 x $0.15/M + 500 x $0.60/M at the `prices` fixture's gpt-4o-mini


def owner_url_of_test_database() -> str:
    from django.db import connection

    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def production_password(user) -> None:
    """The suite hashes with MD5 for speed; the web process knows only the production hashers."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    from tests.conftest import PASSWORD

    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(PASSWORD, hasher.salt())
    user.save(update_fields=["password"])


def signed_in(url: str, username: str) -> httpx.Client:
    """A console session, signed in through the sign-in form."""
    import re

    from tests.conftest import PASSWORD

    client = httpx.Client(base_url=url, timeout=15)
    form = client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    answer = client.post("/login/", data={"username": username, "password": PASSWORD,
                                          "csrfmiddlewaretoken": token}, headers={"Referer": f"{url}/login/"})
    assert answer.status_code == 302, answer.text[:500]
    return client


@pytest.fixture
def fleet(make_agent, policy, prices, personas):
    """An agent allowed gpt-4o-mini with a key, and a team budget it reserves against; committed."""
    from agents import services
    from billing.services import budget_create

    policy("all", "permit(principal, action, resource);")
    agent = make_agent("drilled", role_names=("llm-user",), allowed_models=["gpt-4o-mini", "gpt-4o"])
    budget_create(scope="team", team=agent.team, monthly_limit_micros=10_000_000_000, by=personas["finance"])
    _, secret = services.agent_key_issue(agent=agent, by=personas["admin"])
    return {"agent": agent, "secret": secret}


@pytest.fixture
def stack(tmp_path, fleet, personas):
    """The test database as it is now, cloned into a cluster of the drill's own; a web process on it."""
    production_password(personas["admin"])
    postgres = PrivatePostgres(tmp_path)
    postgres.init()
    postgres.start()
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        postgres.clone(owner_url_of_test_database(), app_role=APP_ROLE["user"], app_password=APP_ROLE["password"])
        web = Web(database_url=postgres.url(APP_ROLE["user"], APP_ROLE["password"]), log=tmp_path / "web.log",
                  extra_env={"REDIS_URL": redis.url, "WARDEN_BROKER_URL": redis.url})
        web.start()
        yield {"postgres": postgres, "web": web, "redis": redis, **fleet}
    finally:
        if "web" in locals():
            web.kill()
        postgres.stop()
        redis.stop()


class Agents:
    """`threads` agents asking the gate in a loop, each request with an idempotency key of its own."""

    def __init__(self, url: str, secret: str, threads: int = 3, prefix: str = "drill"):
        self.url, self.secret, self.threads, self.prefix = url, secret, threads, prefix
        self.answers: list[tuple[float, str, int | None, dict, dict]] = []  # (time, key, status, headers, body)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def ask(self, client: httpx.Client, key: str) -> tuple[int | None, dict, dict]:
        try:
            response = client.post(f"{self.url}/api/v1/actions/", json={**BODY, "idempotency_key": key},
                                   headers={"Authorization": f"Bearer {self.secret}"}, timeout=15)
        except httpx.HTTPError as error:  # the connection was cut (the web process killed): no answer
            return None, {}, {"error": repr(error)}
        try:
            body = response.json()
        except ValueError:
            body = {"text": response.text[:200]}
        return response.status_code, dict(response.headers), body

    def _loop(self, number: int) -> None:
        with httpx.Client() as client:
            for i in itertools.count():
                if self.stopping.is_set():
                    return
                key = f"{self.prefix}-{number}-{i}"
                status, headers, body = self.ask(client, key)
                with self._lock:
                    self.answers.append((time.monotonic(), key, status, headers, body))
                if status is None:
                    time.sleep(0.05)

    def start(self) -> None:
        self._workers = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(self.threads)]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self.stopping.set()
        for worker in self._workers:
            worker.join(30)

    def count(self, *, since: float = 0.0, statuses=(201,)) -> int:
        with self._lock:
            return sum(1 for at, _, status, _, _ in self.answers if at >= since and status in statuses)


def consistency(url: str) -> dict:
    """What the database says, as its owner: every decision whole, the budget's counter equal to its lines."""
    with psycopg.connect(url) as conn:
        one = lambda query: conn.execute(query).fetchone()[0]  # noqa: E731
        return {
            "actions": one("SELECT count(*) FROM governance_action"),
            "keys": one("SELECT count(DISTINCT idempotency_key) FROM governance_action"),
            "not_allowed": one("SELECT count(*) FROM governance_action WHERE outcome <> 'allowed'"),
            "outcomes": conn.execute("SELECT outcome, reasons::text, count(*) FROM governance_action "
                                     "GROUP BY 1, 2").fetchall(),  # shown when an assertion fails
            "without_event": one("""SELECT count(*) FROM governance_action a WHERE NOT EXISTS (
                                    SELECT 1 FROM audit_auditevent e WHERE e.payload->>'action_id' = a.id::text)"""),
            "events_per_action": one("""SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM audit_auditevent
                                        WHERE payload ? 'action_id' GROUP BY payload->>'action_id') c"""),
            "without_reservation": one("""SELECT count(*) FROM governance_action a WHERE NOT EXISTS (
                                          SELECT 1 FROM billing_reservationline l WHERE l.action_id = a.id)"""),
            "reserved": one("SELECT coalesce(sum(reserved_micros), 0) FROM billing_budgetperiod"),
            "lines": one("SELECT coalesce(sum(micros), 0) FROM billing_reservationline WHERE settled_at IS NULL"),
            "actions_reserved": one("SELECT coalesce(sum(reserved_micros), 0) FROM governance_action"),
        }


def audit_verifies(database_url: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "manage.py", "audit_verify", "--workers", "1"], cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": database_url, "WARDEN_APP_DATABASE_URL": ""},
                          capture_output=True, text=True, timeout=120)


def assert_whole(stack, agents: Agents) -> dict:
    """Retry every request that got no decision, then check the database is whole and the chains verify."""
    answered = {}
    for _, key, status, _, body in agents.answers:
        if status in (200, 201):
            answered[key] = body["id"]
    retried = [key for _, key, status, _, _ in agents.answers if status not in (200, 201)]
    with httpx.Client() as client:
        for key in retried:
            status, _, body = agents.ask(client, key)
            assert status in (200, 201), (key, status, body)
            answered[key] = body["id"]
        for key in list(answered)[:20]:  # an answered request, asked again, is the same decision
            status, _, body = agents.ask(client, key)
            assert (status, body["id"]) == (200, answered[key]) or (status, body["id"]) == (201, answered[key])
    owner = stack["postgres"].url()
    state = consistency(owner)
    assert state["actions"] == state["keys"] == len(answered), state
    assert state["without_event"] == 0 and state["events_per_action"] == 1, state
    assert state["not_allowed"] == 0 and state["without_reservation"] == 0, state
    assert state["reserved"] == state["lines"] == state["actions_reserved"] == EACH * len(answered), state
    result = audit_verifies(owner)
    assert result.returncode == 0 and "audit log intact" in result.stdout, result.stdout + result.stderr
    return state


def test_postgres_crashing_mid_traffic_fails_closed_with_503s_and_recovers_by_itself(stack):
    admin = signed_in(stack["web"].url, "admin-user")
    agents = Agents(stack["web"].url, stack["secret"])
    agents.start()
    try:
        wait_until(lambda: agents.count() >= 15, timeout=60, message="the gate did not answer before the drill",
                   logs=stack["web"].logs)
        stack["postgres"].crash()
        down = time.monotonic()
        time.sleep(1.0)  # agents keep asking while PostgreSQL is down
        with httpx.Client(base_url=stack["web"].url, timeout=15) as client:
            gateway = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {stack['secret']}"},
                                  json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        console = admin.get("/agents/")  # the session is looked up in PostgreSQL
        time.sleep(1.0)
        refused = agents.count(since=down + 0.5, statuses=(503,))
        restarting = time.monotonic()
        stack["postgres"].start()
        back = time.monotonic()
        wait_until(lambda: agents.count(since=back) >= 15, timeout=60,
                   message="the gate did not recover after PostgreSQL came back", logs=stack["web"].logs)
        recovered = min(at for at, _, status, _, _ in agents.answers if at >= back and status == 201) - back
    finally:
        agents.stop()

    statuses = Counter(status for _, _, status, _, _ in agents.answers)
    assert set(statuses) <= {201, 503}, statuses  # never a 500, never a cut connection
    assert refused > 0, statuses
    outage = [(headers, body) for at, _, status, headers, body in agents.answers if status == 503]
    for headers, body in outage:
        assert headers["content-type"] == "application/problem+json", headers
        assert body["status"] == 503 and body["title"] == "Service unavailable", body
        assert headers.get("retry-after") == "2", headers
    # The gateway answers in the OpenAI protocol's shape, the console with a page: 503 both, never a 500.
    assert gateway.status_code == 503 and gateway.json()["error"]["type"] == "service_unavailable", gateway.text
    assert gateway.headers["retry-after"] == "2"
    assert console.status_code == 503 and "cannot be reached" in console.text, console.text[:300]
    assert admin.get("/agents/").status_code == 200  # and the same session works again
    admin.close()
    # Nothing was allowed while the database could not record it.
    allowed_in_outage = [at for at, _, status, _, _ in agents.answers if down + 0.5 <= at < restarting and status == 201]
    assert not allowed_in_outage
    print(f"\nPostgreSQL drill: {dict(statuses)}; first allowed decision {recovered * 1000:.0f} ms after "
          "PostgreSQL answered again")
    assert_whole(stack, agents)


def test_the_web_process_killed_mid_request_leaves_no_half_written_decision(stack):
    agents = Agents(stack["web"].url, stack["secret"], threads=6)
    agents.start()
    try:
        wait_until(lambda: agents.count() >= 40, timeout=60, message="the gate did not answer before the kill",
                   logs=stack["web"].logs)
        stack["web"].kill()  # six requests in flight, at whatever step each has reached
        time.sleep(0.3)
    finally:
        agents.stop()
    cut = [key for _, key, status, _, _ in agents.answers if status is None]
    assert cut, "no request was in flight when the web process died"
    stack["web"].start()  # a new process, as a supervisor would start
    state = assert_whole(stack, agents)
    print(f"\nweb process drill: {len(cut)} requests got no answer; {state['actions']} decisions, all whole")


@pytest.mark.browser
def test_redis_restarted_loses_no_decision_or_approval_and_the_live_timeline_catches_up(tmp_path, fleet, personas,
                                                                                         policy):
    """The web process's cache, channel layer and broker are a private Redis, killed and started again while
    security watches the live timeline and an agent keeps asking: every decision and approval request is in
    PostgreSQL, and the page, once Redis is back, shows every event without a reload."""
    from audit.models import AuditEvent
    from governance.models import Action, Approval
    from tests.browser import SHOTS, chromium, sign_in
    from tests.conftest import PASSWORD
    from tests.runtime.cluster import app_database_url

    production_password(personas["security"])
    policy("escalate-4o", '@escalate("finance") forbid(principal, action, resource == Model::"gpt-4o");')
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    web = Web(database_url=app_database_url(), log=tmp_path / "web.log",
              extra_env={"REDIS_URL": redis.url, "WARDEN_BROKER_URL": redis.url,
                         "ALLOWED_HOSTS": "127.0.0.1,localhost"})
    answers = []
    try:
        web.start()

        def ask(resource="gpt-4o-mini", key=None):
            with httpx.Client() as client:
                response = client.post(f"{web.url}/api/v1/actions/",
                                       json={**BODY, "resource": resource, **({"idempotency_key": key} if key else {})},
                                       headers={"Authorization": f"Bearer {fleet['secret']}"}, timeout=15)
            answers.append((resource, response.status_code, response.json()))
            return response

        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            sign_in(page, web.url, "security-user", PASSWORD)
            page.wait_for_url(f"{web.url}/")
            page.goto(f"{web.url}/audit/?agent=drilled")
            page.wait_for_selector("#live-status:has-text('live')")
            rows = page.locator("#event-rows tr[data-id]")
            before = rows.count()
            assert ask().status_code == 201
            page.wait_for_function(f"document.querySelectorAll('#event-rows tr[data-id]').length == {before + 1}",
                                   timeout=10_000)

            redis.stop()
            during = [ask(key=f"redis-down-{n}") for n in range(3)] + [ask("gpt-4o", key="redis-down-escalated")]
            assert [r.status_code for r in during] == [201, 201, 201, 201], [r.json() for r in during]
            assert during[-1].json()["outcome"] == "pending_approval"
            page.wait_for_selector("#live-status:not(:has-text('live'))", timeout=20_000)
            page.screenshot(path=str(SHOTS / "drill-redis-down.png"), full_page=True)

            redis.start()  # same port, empty: every counter and channel starts again
            restarted = time.monotonic()
            try:
                page.wait_for_selector("#live-status:has-text('live')", timeout=60_000)
                print(f"\nRedis drill: the page was live again {time.monotonic() - restarted:.1f} s after Redis")
            except Exception as error:
                attempts = page.get_attribute("#live-status", "data-attempts")
                raise AssertionError(f"the page did not reconnect ({attempts} attempts, status "
                                     f"{page.inner_text('#live-status')!r}):\n{web.logs()}") from error
            # On reconnecting, the page fetched what it missed: every event so far, before the next one.
            so_far = AuditEvent.objects.filter(agent_name="drilled").count()
            page.wait_for_function(f"document.querySelectorAll('#event-rows tr[data-id]').length >= {so_far}",
                                   timeout=15_000)
            # The next event can only arrive pushed (the catch-up is done): the first push after the restart.
            assert ask(key="redis-back").status_code == 201
            expected = AuditEvent.objects.filter(agent_name="drilled").count()  # all of them, made before or after
            try:
                page.wait_for_function(
                    f"document.querySelectorAll('#event-rows tr[data-id]').length >= {expected}", timeout=15_000)
            except Exception as error:
                page.screenshot(path=str(SHOTS / "drill-redis-failed.png"), full_page=True)
                raise AssertionError(f"{page.locator('#event-rows tr[data-id]').count()} rows of {expected} "
                                     f"(before: {before}), status {page.inner_text('#live-status')!r}\n"
                                     f"{web.logs()}") from error
            page.screenshot(path=str(SHOTS / "drill-redis-caught-up.png"), full_page=True)
            shown = set(page.locator("#event-rows tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)"))
    finally:
        web.kill()
        redis.stop()

    decided = AuditEvent.objects.filter(agent_name="drilled", payload__has_key="action_id")
    assert {str(pk) for pk in decided.values_list("pk", flat=True)} <= shown
    assert Action.objects.filter(agent=fleet["agent"]).count() == 6
    escalated = Action.objects.get(idempotency_key="redis-down-escalated")
    assert Approval.objects.filter(action=escalated, status="pending").exists()
