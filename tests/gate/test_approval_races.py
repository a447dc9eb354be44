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
