"""The MCP gateway, driven by the official `mcp` SDK's client against the real ASGI server, in front of a local
MCP server built with the SDK that records every call it receives."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from django.db.models import Sum

from audit.models import AuditEvent
from billing.models import BudgetPeriod, LedgerEntry
from governance.models import Action, Approval, DataSink
from tests.browser import asgi_server
from tests.gateway.fake_mcp import fake_mcp

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS = [
    {"name": "lookup_customer", "description": "A customer's record.", "price_micros": 2_000,
     "input_schema": {"type": "object", "properties": {"customer_id": {"type": "string", "pattern": "^c-[0-9]+$"}},
                      "required": ["customer_id"], "additionalProperties": False}, "returns": "confidential"},
    {"name": "send_welcome", "price_micros": 5_000, "clearance": "internal",
     "input_schema": {"type": "object", "properties": {"email": {"type": "string"}, "text": {"type": "string"}},
                      "required": ["email", "text"]}},
    {"name": "slow", "price_micros": 1_000,
     "input_schema": {"type": "object", "properties": {"seconds": {"type": "number"}}}},
    {"name": "broken", "price_micros": 3_000},
]
ALLOWED = ["crm/lookup_customer", "crm/send_welcome", "crm/slow", "crm/broken", "crm/delete_everything"]


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]


@pytest.fixture
def upstream(settings):
    with fake_mcp() as fake:
        settings.WARDEN_MCP_UPSTREAM_KEYS = json.dumps({"crm": {"api_key": "crm-upstream-secret"}})
        yield fake


@pytest.fixture
def registered(upstream, personas):
    from agents.gateway.registry import mcp_server_register

    return mcp_server_register(by=personas["admin"], name="crm", url=upstream.url, timeout_seconds=2,
                               description="The customer records", tools=[dict(tool) for tool in TOOLS])


@pytest.fixture
def permitted(policy):
    return policy("all", "permit(principal, action, resource);")


@pytest.fixture
def mcp(registered, make_agent, permitted, personas):
    """Call the gateway as an agent with the SDK's client: mcp(lambda session: ...) -> the coroutine's result."""
    from agents.services import agent_key_issue

    agent = make_agent("outside-bot", allowed_tools=ALLOWED)
    _, secret = agent_key_issue(agent=agent, by=personas["admin"])
    with asgi_server() as url:
        def call(work, key=secret, server="crm"):
            return asyncio.run(_session(f"{url}/mcp/{server}/", key, work))
        call.agent, call.url, call.secret = agent, url, secret
        yield call


async def _session(url, key, work):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)


def reserved_now() -> int:
    return BudgetPeriod.objects.aggregate(total=Sum("reserved_micros"))["total"] or 0


def error_of(result) -> dict:
    assert result.isError
    return result.meta["warden/error"]


def test_tools_list_shows_only_registered_tools_the_agent_could_be_allowed(mcp, policy, upstream):
    listed = mcp(lambda session: session.list_tools())
    names = sorted(tool.name for tool in listed.tools)
    # delete_everything is offered by the server and named in the agent's tools, but not registered with Warden.
    assert names == ["broken", "lookup_customer", "send_welcome", "slow"]
    lookup = next(tool for tool in listed.tools if tool.name == "lookup_customer")
    assert lookup.inputSchema["required"] == ["customer_id"]

    policy("no-welcomes", 'forbid(principal, action == Action::"tool.call", resource == Tool::"crm/send_welcome");')
    policy("slow-needs-ops", '@escalate("admin")\nforbid(principal, action, resource == Tool::"crm/slow");')
    mcp.agent.allowed_tools = [t for t in ALLOWED if t != "crm/broken"]
    mcp.agent.save()
    names = sorted(tool.name for tool in mcp(lambda session: session.list_tools()).tools)
    assert names == ["lookup_customer", "slow"]  # forbidden and not allowed: hidden; escalated: could be approved
    assert upstream.calls == [] and not Action.objects.exists()  # listing asks nobody and records nothing


def test_an_allowed_call_is_forwarded_once_with_wardens_credential_and_charged_wardens_price(mcp, upstream):
    result = mcp(lambda session: session.call_tool("lookup_customer", {"customer_id": "c-42"}))
    assert not result.isError
    assert result.structuredContent == {"id": "c-42", "name": "Ada Example", "segment": "new"}
    action = Action.objects.get(pk=result.meta["warden/action_id"])
    assert (action.action, action.resource, action.outcome, action.status) == (
        "tool.call", "crm/lookup_customer", "allowed", "succeeded")
    (call,) = upstream.calls
    assert call == {"tool": "lookup_customer", "arguments": {"customer_id": "c-42"}, "action": str(action.pk),
                    "authorization": "Bearer crm-upstream-secret"}
    entry = LedgerEntry.objects.get()
    assert (entry.resource, entry.cost_micros) == ("crm/lookup_customer", 2_000)
    assert reserved_now() == 0
    events = list(AuditEvent.objects.filter(agent_id=mcp.agent.pk).values_list("action", flat=True))
    assert "gate.tool.call" in events and "gate.complete" in events
    # The agent's key never goes upstream; the server's credential never reaches the agent.
    assert mcp.secret not in json.dumps(upstream.calls)


def test_denied_unregistered_and_malformed_calls_never_reach_the_server(mcp, upstream, policy, personas):
    from billing.services import budget_create

    policy("no-welcomes", 'forbid(principal, action == Action::"tool.call", resource == Tool::"crm/send_welcome");')
    denied = mcp(lambda session: session.call_tool("send_welcome", {"email": "a@example.com", "text": "hi"}))
    error = error_of(denied)
    assert error["type"] == "warden_denied" and error["reasons"] == ["forbidden by policy no-welcomes"]
    assert "forbidden by policy no-welcomes" in denied.content[0].text
    assert Action.objects.get(pk=error["action_id"]).outcome == "denied"

    unknown = mcp(lambda session: session.call_tool("delete_everything", {}))
    assert error_of(unknown)["type"] == "unknown_tool"
    wrong = mcp(lambda session: session.call_tool("lookup_customer", {"customer_id": "'; drop table"}))
    assert error_of(wrong)["type"] == "invalid_arguments" and "customer_id" in wrong.content[0].text
    extra = mcp(lambda session: session.call_tool("lookup_customer", {"customer_id": "c-1", "admin": True}))
    assert error_of(extra)["type"] == "invalid_arguments"

    budget_create(scope="agent", agent=mcp.agent, monthly_limit_micros=1_000, by=personas["finance"])
    over = mcp(lambda session: session.call_tool("lookup_customer", {"customer_id": "c-7"}))
    assert error_of(over)["type"] == "warden_denied" and "budget" in over.content[0].text
    assert upstream.calls == [] and not LedgerEntry.objects.exists()
    assert Action.objects.count() == 2  # what could not be judged (unknown tool, bad arguments) asked nobody


def test_bad_keys_and_unknown_servers_are_refused_before_the_sdk(mcp, registered):
    with pytest.raises(Exception) as raised:
        mcp(lambda session: session.list_tools(), key="wdn_not-a-key")
    assert "401" in repr(raised.value) or "401" in str(raised.value.__dict__)
    accept = {"Authorization": f"Bearer {mcp.secret}", "Accept": "application/json, text/event-stream"}
    assert httpx.get(f"{mcp.url}/mcp/crm/", headers=accept).status_code == 405  # no standing streams
    assert httpx.post(f"{mcp.url}/mcp/%00/", json={}, headers=accept).status_code == 404
    deep = "[" * 100_000 + "]" * 100_000
    assert httpx.post(f"{mcp.url}/mcp/crm/", content=deep, headers=accept).status_code == 400
    plain = httpx.post(f"{mcp.url}/mcp/crm/", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       headers={"Authorization": "Bearer nope", "Accept": "application/json, text/event-stream"})
    assert plain.status_code == 401 and plain.headers["www-authenticate"].startswith("Bearer")
    missing = httpx.post(f"{mcp.url}/mcp/nowhere/", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                         headers={"Authorization": f"Bearer {mcp.secret}",
                                  "Accept": "application/json, text/event-stream"})
    assert missing.status_code == 404


def test_an_escalated_call_waits_for_the_person_then_runs(mcp, upstream, policy, personas, settings):
    from governance.approvals import approval_decide

    policy("welcomes-need-security", '@escalate("security")\nforbid(principal, action, resource == Tool::"crm/send_welcome");')
    settings.WARDEN_GATEWAY_APPROVAL_WAIT = 15
    answers = []
    caller = threading.Thread(target=lambda: answers.append(mcp(lambda session: session.call_tool(
        "send_welcome", {"email": "ada@example.com", "text": "Welcome!"}))))
    caller.start()
    deadline = time.monotonic() + 10
    while not Approval.objects.filter(status="pending").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.calls == []
    approval_decide(approval=Approval.objects.get(), by=personas["security"], verdict="approve", comment="ok")
    caller.join(15)
    assert answers and not answers[0].isError and answers[0].content[0].text == "sent to ada@example.com"
    assert len(upstream.calls) == 1 and Action.objects.get().status == "succeeded"


def test_a_call_still_waiting_is_a_tool_error_and_calling_again_once_approved_runs_that_call_once(
        mcp, upstream, policy, personas, settings):
    from governance.approvals import approval_decide

    policy("welcomes-need-security", '@escalate("security")\nforbid(principal, action, resource == Tool::"crm/send_welcome");')
    settings.WARDEN_GATEWAY_APPROVAL_WAIT = 0
    welcome = {"email": "ada@example.com", "text": "Welcome!"}
    waiting = mcp(lambda session: session.call_tool("send_welcome", welcome))
    error = error_of(waiting)
    # The person deciding reads what would be sent.
    assert json.loads(Action.objects.get(pk=error["action_id"]).context["gateway"]["arguments"]) == welcome
    assert error["type"] == "warden_pending_approval" and "again with the same arguments" in waiting.content[0].text
    again = mcp(lambda session: session.call_tool("send_welcome", welcome))  # still waiting: the same action
    assert error_of(again)["action_id"] == error["action_id"] and Approval.objects.count() == 1
    approval_decide(approval=Approval.objects.get(), by=personas["security"], verdict="approve", comment="ok")
    other = mcp(lambda session: session.call_tool("send_welcome", {**welcome, "text": "Something else"}))
    assert error_of(other)["type"] == "warden_pending_approval"  # other arguments: not what was approved
    assert error_of(other)["action_id"] != error["action_id"]
    done = mcp(lambda session: session.call_tool("send_welcome", welcome))
    assert not done.isError and done.meta["warden/action_id"] == error["action_id"]
    assert [call["arguments"] for call in upstream.calls] == [welcome]
    # The approval covered one call: the next identical call is a new request, waiting for a person again.
    after = mcp(lambda session: session.call_tool("send_welcome", welcome))
    assert error_of(after)["type"] == "warden_pending_approval" and error_of(after)["action_id"] != error["action_id"]
    assert len(upstream.calls) == 1


def test_upstream_failures_are_failed_actions_charged_only_when_the_tool_may_have_run(mcp, upstream, personas):
    from agents.gateway.registry import mcp_server_update
    from agents.models import McpServer

    broken = mcp(lambda session: session.call_tool("broken", {}))
    assert broken.isError and "maintenance" in broken.content[0].text  # the tool's own error, unchanged
    action = Action.objects.get(pk=broken.meta["warden/action_id"])
    assert action.status == "failed" and action.actual_cost_micros == 3_000  # it ran: an error answer is charged

    slow = mcp(lambda session: session.call_tool("slow", {"seconds": 5}))  # the server's timeout is 2 s
    assert error_of(slow)["type"] == "upstream_timeout"
    timed_out = Action.objects.get(pk=error_of(slow)["action_id"])
    assert timed_out.status == "failed" and timed_out.actual_cost_micros == 1_000  # it may have run: charged

    for status, cost in ((429, 0), (503, 0), (500, 3_000)):
        # 429 and 503 refuse at the door (nothing ran); a 500 after the call was sent may follow the tool's work.
        upstream.fail_status = status
        refused = mcp(lambda session: session.call_tool("broken", {}))
        assert (error_of(refused)["type"], error_of(refused)["status"]) == ("upstream_error", status)
        assert f"HTTP {status}" in refused.content[0].text
        assert Action.objects.get(pk=error_of(refused)["action_id"]).actual_cost_micros == cost
    assert upstream.refused == 3
    upstream.fail_status = None

    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    mcp_server_update(server=McpServer.objects.get(name="crm"),
                      by=personas["admin"], url=f"http://127.0.0.1:{dead_port}/mcp")
    unreachable = mcp(lambda session: session.call_tool("broken", {}))
    assert error_of(unreachable)["type"] == "upstream_unavailable"
    assert Action.objects.get(pk=error_of(unreachable)["action_id"]).actual_cost_micros == 0
    assert sum(LedgerEntry.objects.values_list("cost_micros", flat=True)) == 3_000 + 3_000 + 1_000
    assert reserved_now() == 0
    assert [call["tool"] for call in upstream.calls] == ["broken", "slow"]


def test_a_retired_server_or_tool_is_gone_from_the_gateway(mcp, upstream, personas):
    from agents.gateway.registry import mcp_server_update, mcp_tool_set
    from agents.models import McpServer

    server = McpServer.objects.get(name="crm")
    mcp_tool_set(server=server, by=personas["admin"], name="lookup_customer", input_schema=TOOLS[0]["input_schema"],
                 active=False)
    assert "lookup_customer" not in [t.name for t in mcp(lambda session: session.list_tools()).tools]
    assert error_of(mcp(lambda session: session.call_tool("lookup_customer", {"customer_id": "c-1"})))["type"] \
        == "unknown_tool"
    mcp_server_update(server=server, by=personas["admin"], active=False)
    with pytest.raises(Exception):
        mcp(lambda session: session.list_tools())
    assert upstream.calls == []


def test_registration_over_the_api_is_for_admins_and_audited(api_for, upstream):
    body = {"name": "crm", "url": upstream.url, "tools": [TOOLS[0], {**TOOLS[1], "clearance": "confidential"}]}
    assert api_for("finance").post("/api/v1/mcp-servers/", body, format="json").status_code == 403
    created = api_for("admin").post("/api/v1/mcp-servers/", body, format="json")
    assert created.status_code == 201, created.content
    tools = {tool["name"]: tool for tool in created.json()["tools"]}
    assert created.json()["gateway_path"] == "/mcp/crm/"
    assert tools["lookup_customer"]["price_micros"] == 2_000 and tools["lookup_customer"]["returns"] == "confidential"
    assert tools["send_welcome"]["clearance"] == "confidential"
    assert DataSink.objects.get(kind="tool", name="crm/send_welcome").get_clearance_display() == "confidential"
    assert set(AuditEvent.objects.filter(resource__startswith="mcp_").values_list("action", flat=True)) == {
        "mcp_server.register", "mcp_tool.register"}
    assert api_for("viewer").get("/api/v1/mcp-servers/crm/").status_code == 200

    # A change names what changes; the rest stays (a retired tool is not revived, its schema not dropped).
    changed = api_for("admin").patch("/api/v1/mcp-servers/crm/", {"tools": [{"name": "lookup_customer",
                                                                               "returns": "restricted"}]}, format="json")
    assert changed.status_code == 200
    lookup = next(tool for tool in changed.json()["tools"] if tool["name"] == "lookup_customer")
    assert lookup["returns"] == "restricted" and lookup["input_schema"] == TOOLS[0]["input_schema"]
    assert lookup["price_micros"] == 2_000 and lookup["active"]
    # An admin gives a new tool its first price; changing a price is finance's (on the prices page).
    repriced = api_for("admin").patch("/api/v1/mcp-servers/crm/", {"tools": [{"name": "lookup_customer",
                                                                                "price_micros": 0}]}, format="json")
    assert repriced.status_code == 400 and "finance" in repriced.content.decode()
    unpriced = api_for("admin").patch("/api/v1/mcp-servers/crm/", {"tools": [{"name": "free_lunch"}]}, format="json")
    assert unpriced.status_code == 200
    assert next(t for t in unpriced.json()["tools"] if t["name"] == "free_lunch")["price_micros"] is None
    bad = [{"name": "crm2", "url": "file:///etc/passwd"}, {"name": "crm3", "url": "http://u:p@example.com/mcp"},
           {"name": "Bad Name", "url": upstream.url},
           {"name": "crm4", "url": upstream.url, "tools": [{"name": "x", "price_micros": 1, "input_schema": {"type": "string"}}]},
           {"name": "crm5", "url": upstream.url, "tools": [{"name": "x y", "price_micros": 1}]},
           {"name": "crm6", "url": upstream.url, "tools": [{"name": "x", "price_micros": -1}]},
           {"name": "crm7", "url": upstream.url, "tools": [{"name": "x", "input_schema": {"type": "object",
                                                                                         "title": "a\u0000b"}}]}]
    for body in bad:
        answer = api_for("admin").post("/api/v1/mcp-servers/", body, format="json")
        assert answer.status_code == 400, body
    assert list(api_for("admin").get("/api/v1/mcp-servers/").json()["results"][i]["name"] for i in range(1)) == ["crm"]


def test_what_a_tool_returns_is_carried_afterwards_and_may_not_go_where_it_is_not_cleared(mcp, upstream, make_agent):
    from agents.services import agent_key_issue

    welcome = {"email": "ada@example.com", "text": "Welcome, Ada!"}
    assert not mcp(lambda session: session.call_tool("send_welcome", welcome)).isError  # nothing sensitive held yet
    assert not mcp(lambda session: session.call_tool("lookup_customer", {"customer_id": "c-42"})).isError
    leak = mcp(lambda session: session.call_tool("send_welcome", welcome))
    error = error_of(leak)
    assert error["type"] == "warden_denied"
    (reason,) = error["reasons"]
    assert reason.startswith("data flow: tool crm/send_welcome is cleared for internal data; this request derived "
                             "from tool crm/lookup_customer (confidential)")
    assert [call["tool"] for call in upstream.calls] == ["send_welcome", "lookup_customer"]
    # Another agent that never called the lookup is not tainted by it.
    other = make_agent("clean-bot", allowed_tools=ALLOWED)
    _, secret = agent_key_issue(agent=other, by=other.owner)
    assert not mcp(lambda session: session.call_tool("send_welcome", welcome), key=secret).isError


def test_an_unpriced_tool_is_registered_but_neither_listed_nor_forwarded(mcp, upstream, personas):
    from agents.gateway.registry import mcp_tool_set
    from agents.models import McpServer

    mcp_tool_set(server=McpServer.objects.get(name="crm"), by=personas["admin"], name="delete_everything")
    assert "delete_everything" not in [t.name for t in mcp(lambda session: session.list_tools()).tools]
    refused = mcp(lambda session: session.call_tool("delete_everything", {}))
    assert error_of(refused)["type"] == "warden_denied" and "has no price" in refused.content[0].text
    assert upstream.calls == []


def test_an_agents_own_context_is_never_shown_as_what_a_gateway_call_would_send(bot, policy, client_for):
    from tests.conftest import ask

    policy("all", "permit(principal, action, resource);")
    policy("big-needs-security", '@escalate("security")\nforbid(principal, action, resource == Model::"gpt-4o");')
    answer = ask(bot, resource="gpt-4o", context={"input_tokens": 10, "max_output_tokens": 5,
                                                   "gateway": {"arguments": "{\"harmless\": true}"}})
    assert answer.json()["outcome"] == "pending_approval"
    approval = Approval.objects.get()
    page = client_for("security").get(f"/approvals/{approval.pk}/").content.decode()
    assert "What it would send" not in page and "harmless" not in page
