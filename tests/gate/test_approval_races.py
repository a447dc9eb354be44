"""Approvals under concurrency and over time: one winner among deciders, long-polling agents answered at once."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from asgiref.testing import ApplicationCommunicator
from django.db import connection

from governance.approvals import approval_decide
from governance.exceptions import Conflict
from governance.models import Action, Approval, ApprovalDecision
from governance.gate import request_action
from tests.conftest import make_user
from tests.sockets import run_scenario

PRICEY = {"input_tokens": 1000, "max_output_tokens": 1000}


@pytest.fixture
def escalated(make_agent, policy, prices, personas):
    policy("all", "permit(principal, action, resource);")
    policy("gpt4o-needs-finance", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    agent = make_agent("asker", allowed_models=["gpt-4o"])
    return agent


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("verdicts", [("approve", "approve"), ("approve", "deny"), ("deny", "deny")])
def test_of_two_people_clicking_at_once_exactly_one_decides(escalated, personas, verdicts):
    action = request_action(agent=escalated, action="llm.call", resource="gpt-4o", context=PRICEY)
    approval = Approval.objects.get(action=action)
    deciders = [personas["finance"], make_user("finance-two", "finance")]
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def decide(n: int) -> None:
        try:
            barrier.wait()
            results[n] = approval_decide(approval=approval, by=deciders[n], verdict=verdicts[n]).status
        except Conflict as conflict:
            results[n] = conflict.code
        except Exception as exc:  # asserted below
            results[n] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(map(str, results)) in (["already_decided", "approved"], ["already_decided", "denied"]), results
    approval.refresh_from_db()
    winner = results.index(approval.status)
    assert approval.decided_by == deciders[winner]
    assert ApprovalDecision.objects.filter(approval=approval).count() == 1
    assert Action.objects.get(pk=action.pk).outcome == ("allowed" if approval.status == "approved" else "denied")


def asgi_get(path: str, query: str, token: str, *, timeout: float):
    from governance.asgi import application

    async def run():
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(timeout)
        body = await communicator.receive_output(timeout)
        return start["status"], json.loads(body["body"])

    return asyncio.run(run())


@pytest.fixture
def hosts(settings):
    """The in-process ASGI app serves 127.0.0.1; its pool threads' connections end with each request
    (else one outlives the test and the test database cannot be dropped)."""
    from django.db import connections

    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    database = connections.databases["default"]
    previous, database["CONN_MAX_AGE"] = database["CONN_MAX_AGE"], 0
    yield
    database["CONN_MAX_AGE"] = previous


@pytest.mark.django_db(transaction=True)
def test_a_waiting_agent_is_answered_as_soon_as_someone_decides(escalated, personas, hosts):
    from agents.services import agent_key_issue

    key, secret = agent_key_issue(agent=escalated, by=personas["admin"])
    action = request_action(agent=escalated, key=key, action="llm.call", resource="gpt-4o", context=PRICEY)
    approval = Approval.objects.get(action=action)
    answer: dict = {}

    def wait() -> None:
        started = time.monotonic()
        answer["status"], answer["body"] = asgi_get(f"/api/v1/actions/{action.pk}/", "wait=20", secret, timeout=25)
        answer["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)  # the agent is waiting now
    assert waiter.is_alive()
    decided_at = time.monotonic()
    approval_decide(approval=approval, by=personas["finance"], verdict="approve", comment="go")
    waiter.join(25)
    assert answer["status"] == 200 and answer["body"]["outcome"] == "allowed"
    assert answer["body"]["approval"]["status"] == "approved"
    assert time.monotonic() - decided_at < 5  # not the 20 s it asked to wait
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_wait_with_no_decision_ends_on_time_with_the_pending_answer(escalated, personas, hosts):
    from agents.services import agent_key_issue

    key, secret = agent_key_issue(agent=escalated, by=personas["admin"])
    action = request_action(agent=escalated, key=key, action="llm.call", resource="gpt-4o", context=PRICEY)
    started = time.monotonic()
    status, body = asgi_get(f"/api/v1/actions/{action.pk}/", "wait=2", secret, timeout=10)
    assert status == 200 and body["outcome"] == "pending_approval"
    assert 1.5 <= time.monotonic() - started < 8
    status, body = asgi_get(f"/api/v1/actions/{action.pk}/", "wait=31", secret, timeout=10)
    assert status == 400 and "wait" in body["errors"]
    status, _ = asgi_get(f"/api/v1/actions/{action.pk}/", "wait=5", "wdn_agent_AAAAAAAA_" + "B" * 40, timeout=10)
    assert status == 401  # judged by the same view: no waiting for anyone it would refuse
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_decision_in_flight_when_the_agent_is_suspended_grants_nothing(escalated, personas, monkeypatch):
    from agents.services import agent_suspend
    from billing import services as billing

    action = request_action(agent=escalated, action="llm.call", resource="gpt-4o", context=PRICEY)
    approval = Approval.objects.get(action=action)
    reached, go, outcome = threading.Event(), threading.Event(), {}
    reserve = billing.reserve

    def paused(**kwargs):  # the decision has read the agent as active and is about to reserve
        if threading.current_thread().name == "decider" and not reached.is_set():
            reached.set()
            assert go.wait(10)
        return reserve(**kwargs)

    monkeypatch.setattr(billing, "reserve", paused)

    def decide():
        try:
            outcome["approval"] = approval_decide(approval=approval, by=personas["finance"], verdict="approve")
        except Exception as exc:  # asserted below
            outcome["error"] = exc
        finally:
            connection.close()

    decider = threading.Thread(target=decide, name="decider")
    decider.start()
    assert reached.wait(10)
    suspender = threading.Thread(target=lambda: (agent_suspend(agent=escalated, by=personas["security"],
                                                               reason="pulled"), connection.close()))
    suspender.start()
    time.sleep(0.5)  # the suspension's status change commits; its withdrawal waits for the request's lock
    go.set()
    decider.join(20)
    suspender.join(20)
    # The click loses to the kill switch: either it was judged again and denied, or the suspension's withdrawal
    # got the request first and the click is told it was already decided. Never "allowed".
    error = outcome.get("error")
    assert error is None or (isinstance(error, Conflict) and error.code == "already_decided"), outcome
    action.refresh_from_db()
    assert action.outcome == "denied" and action.reserved_micros == 0
    assert Approval.objects.get(pk=approval.pk).status == "denied"
    assert not Action.objects.filter(agent=escalated, outcome="allowed", status="decided").exists()


@pytest.mark.django_db(transaction=True)
def test_deciders_the_gate_completions_and_the_sweep_together_never_deadlock(escalated, personas):
    """Deciding locks the request, its action, budget periods, then chain heads: the order everyone else uses."""
    import random

    from billing.models import BudgetPeriod, LedgerEntry, ReservationLine
    from billing.services import budget_create
    from django.db.models import Sum
    from governance.gate import actions_expire, complete_action

    budget_create(scope="organisation", monthly_limit_micros=10**11, by=personas["finance"])
    budget_create(scope="team", team=escalated.team, monthly_limit_micros=10**10, by=personas["finance"])
    deciders = [personas["finance"], make_user("finance-two", "finance"), make_user("finance-three", "finance")]
    errors: list = []
    running = threading.Event()
    running.set()

    def guarded(work):
        def run(*args):
            try:
                work(*args)
            except Exception as exc:  # asserted below
                errors.append(exc)
            finally:
                connection.close()
        return run

    @guarded
    def asker(n: int) -> None:
        rnd = random.Random(n)
        for _ in range(20):
            model = rnd.choice(["gpt-4o", "gpt-4o-mini"])
            action = request_action(agent=escalated, action="llm.call", resource=model, context=PRICEY)
            if action.outcome == "allowed" and rnd.random() < 0.5:
                complete_action(action=action, status="succeeded", usage_source="provider",
                                usage={"input_tokens": 500, "output_tokens": 500})

    @guarded
    def decider(n: int) -> None:
        rnd = random.Random(100 + n)
        while running.is_set():
            for approval in Approval.objects.filter(status="pending").order_by("?")[:3]:
                try:
                    approval_decide(approval=approval, by=deciders[n], verdict=rnd.choice(["approve", "approve", "deny"]))
                except Conflict:
                    pass

    @guarded
    def sweeper() -> None:
        import datetime as dt

        while running.is_set():
            actions_expire(older_than=dt.timedelta(0))
            time.sleep(0.01)

    askers = [threading.Thread(target=asker, args=(n,)) for n in range(4)]
    others = [threading.Thread(target=decider, args=(n,)) for n in range(3)] + [threading.Thread(target=sweeper)]
    for thread in askers + others:
        thread.start()
    for thread in askers:
        thread.join(120)
    time.sleep(0.5)
    running.clear()
    for thread in others:
        thread.join(60)
    assert errors == [], errors[:3]
    assert Approval.objects.exclude(status="pending").exists()
    for period in BudgetPeriod.objects.all():
        lines = ReservationLine.objects.filter(period=period, settled_at__isnull=True).aggregate(s=Sum("micros"))["s"]
        assert period.reserved_micros == (lines or 0)
        assert period.spent_micros == (LedgerEntry.objects.aggregate(s=Sum("cost_micros"))["s"] or 0)


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_is_down_does_not_turn_a_committed_escalation_into_an_error(escalated, personas, monkeypatch):
    from agents.services import agent_key_issue
    from governance import tasks
    from rest_framework.test import APIClient

    def broken(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.approval_email_task, "delay", broken)
    _, secret = agent_key_issue(agent=escalated, by=personas["admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = client.post("/api/v1/actions/", {"action": "llm.call", "resource": "gpt-4o", "context": PRICEY},
                           format="json")
    assert response.status_code == 201 and response.json()["outcome"] == "pending_approval"
    assert Approval.objects.filter(status="pending").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_live_queue_stops_for_someone_who_lost_access(escalated, personas, hosts):
    from channels.routing import URLRouter
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore

    from governance.routing import websocket_urlpatterns

    finance = personas["finance"]
    session = SessionStore()
    session.create()

    async def scenario():
        scope = {"type": "websocket", "path": "/ws/approvals/", "query_string": b"status=pending", "headers": [],
                 "subprotocols": [], "user": finance, "session": session}
        socket = ApplicationCommunicator(URLRouter(websocket_urlpatterns), scope)
        await socket.send_input({"type": "websocket.connect"})
        assert (await socket.receive_output(3))["type"] == "websocket.accept"
        from asgiref.sync import sync_to_async

        await sync_to_async(request_action)(agent=escalated, action="llm.call", resource="gpt-4o", context=PRICEY)
        pushed = json.loads((await socket.receive_output(5))["text"])
        assert pushed["event"] == "created" and "gpt-4o" in pushed["html"]
        await sync_to_async(lambda: finance.groups.remove(Group.objects.get(name="finance")))()
        await sync_to_async(request_action)(agent=escalated, action="llm.call", resource="gpt-4o", context=PRICEY)
        closed = await socket.receive_output(5)
        assert closed == {"type": "websocket.close", "code": 4403}

    try:
        run_scenario(scenario())
    finally:
        connection.close()
