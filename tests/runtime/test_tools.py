"""Tools behind the gate: http.get to allow-listed hosts only, email.send to known people, a deployment's own."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.models import RunStep
from audit.models import AuditEvent
from governance.models import Action

from .conftest import drive


@contextmanager
def site():
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            body = b"x" * 5000 if self.path == "/big" else b"<h1>release notes</h1>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def endpoint_price(personas):
    from billing.services import price_set

    price_set(kind="endpoint", name="*", per_call_micros=1_000, by=personas["finance"])


def test_http_get_reaches_an_allow_listed_host_through_the_gate(runner_agent, start, settings, endpoint_price):
    settings.WARDEN_HTTP_TOOL_HOSTS = ["127.0.0.1"]
    with site() as (base, hits):
        run = start(runner_agent("fetch"), f"{base}/notes")
        assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert run.result["status"] == 200 and run.result["text"] == "<h1>release notes</h1>" and hits == ["/notes"]
    action = Action.objects.get(agent=run.agent)
    assert (action.action, action.resource, action.status) == ("tool.http", f"{base}/notes", "succeeded")
    assert action.usage["usage_source"] == "warden" and action.actual_cost_micros == 1_000


def test_http_get_refuses_hosts_off_the_allow_list_before_the_gate(runner_agent, start, settings):
    settings.WARDEN_HTTP_TOOL_HOSTS = ["docs.example.com"]
    with site() as (base, hits):
        run = start(runner_agent("fetch"), f"{base}/notes")
        drive(run)
    assert run.status == "failed" and "host 127.0.0.1 is not on http.get's allow-list" in run.error
    assert hits == [] and not Action.objects.exists()
    assert RunStep.objects.get(run=run).status == "refused"
    assert AuditEvent.objects.filter(action="run.step.refuse", correlation_id=run.correlation_id).exists()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://127.0.0.1@evil.example/x",
                                 "127.0.0.1/notes"])
def test_http_get_takes_only_http_urls_to_allowed_hosts(runner_agent, start, settings, url):
    settings.WARDEN_HTTP_TOOL_HOSTS = ["127.0.0.1"]
    run = start(runner_agent("fetch"), url)
    drive(run)
    assert run.status == "failed" and RunStep.objects.get(run=run).status == "refused"
    assert not Action.objects.exists()


def test_http_get_does_not_follow_redirects_and_cuts_large_answers(runner_agent, start, settings, endpoint_price):
    settings.WARDEN_HTTP_TOOL_HOSTS = ["127.0.0.1"]
    settings.WARDEN_HTTP_TOOL_MAX_BYTES = 1000
    with site() as (base, hits):
        moved = start(runner_agent("fetch"), f"{base}/moved")
        drive(moved)
        big = start(runner_agent("fetch", name="fetcher-2"), f"{base}/big")
        drive(big)
    assert moved.result["status"] == 302 and moved.result["location"].startswith("http://169.254.169.254/")
    assert hits == ["/moved", "/big"]  # the metadata address was never asked for
    assert big.result["truncated"] is True and len(big.result["text"]) == 1000


def test_email_send_writes_to_warden_users_and_refuses_others(runner_agent, start, settings, personas, mailoutbox):
    from billing.services import price_set

    price_set(kind="tool", name="email.send", per_call_micros=100, by=personas["finance"])
    sent = start(runner_agent("mailer"), "finance-user@example.test")
    assert drive(sent) == "finished" and sent.status == "succeeded", sent.error
    assert sent.result == {"sent": 1, "to": ["finance-user@example.test"]}
    assert mailoutbox[-1].subject == "Hello" and mailoutbox[-1].to == ["finance-user@example.test"]
    refused = start(runner_agent("mailer", name="mailer-2"), "someone@competitor.example")
    drive(refused)
    assert refused.status == "failed" and "neither a Warden user's address nor in an allowed domain" in refused.error
    assert len(mailoutbox) == 1
    settings.WARDEN_EMAIL_TOOL_DOMAINS = ["competitor.example"]
    allowed = start(runner_agent("mailer", name="mailer-3"), "someone@competitor.example")
    drive(allowed)
    assert allowed.status == "succeeded" and len(mailoutbox) == 2


def test_a_tool_not_in_the_agents_allowed_tools_is_denied_by_the_gate(runner_agent, start, personas, settings):
    """The registry has it; the agent may not use it: the gate says so, nothing runs."""
    from billing.services import price_set

    price_set(kind="tool", name="email.send", per_call_micros=100, by=personas["finance"])
    run = start(runner_agent("mailer", allowed_tools=["search"]), "finance-user@example.test")
    drive(run)
    assert run.status == "failed" and "tool email.send is not in runner's allowed tools" in run.error


def test_a_deployments_own_tool_is_registered_gated_and_charged(runner_agent, start, settings):
    settings.WARDEN_TOOLS = ["tests.runtime.tools.SEARCH"]
    run = start(runner_agent("searcher"), "vector databases")
    assert drive(run) == "finished" and run.status == "succeeded", run.error
    assert run.result == {"hits": ["vector databases: one", "vector databases: two"]}
    action = Action.objects.get(agent=run.agent)
    assert (action.action, action.resource, action.actual_cost_micros) == ("tool.call", "search", 10_000)


@pytest.mark.parametrize("objective,problem", [("x", "query: 'x' is too short"), ("x" * 300, "is too long")])
def test_tool_arguments_are_checked_against_the_tools_schema(runner_agent, start, settings, objective, problem):
    settings.WARDEN_TOOLS = ["tests.runtime.tools.SEARCH"]
    run = start(runner_agent("searcher"), objective)
    drive(run)
    assert run.status == "failed" and problem in run.error and not Action.objects.exists()


def test_an_unknown_tool_is_refused(runner_agent, start):
    run = start(runner_agent("searcher"), "anything")  # no deployment tool named search registered here
    drive(run)
    assert run.status == "failed" and "no tool named 'search'" in run.error
