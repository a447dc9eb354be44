"""The demo's CRM behind the MCP gateway, as `make run` seeds it: what the README's walkthrough shows."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from governance.models import Action, Approval
from tests.browser import asgi_server
from tests.gateway.test_mcp_gateway import _session, error_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def crm(settings):
    from django.core.management import call_command

    from agents.models import Agent
    from agents.services import agent_key_issue

    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
    settings.WARDEN_DEMO_PASSWORD = "demo-pass-123"
    settings.WARDEN_DEMO_MCP_KEY = "demo-crm-key"
    settings.WARDEN_MCP_UPSTREAM_KEYS = json.dumps({"crm": {"api_key": "demo-crm-key"}})
    settings.WARDEN_LLM_UPSTREAMS = json.dumps({"*": "simulated"})
    settings.WARDEN_GATEWAY_APPROVAL_WAIT = 0
    settings.WARDEN_DEMO_TRAFFIC = False
    with asgi_server() as url:
        settings.WARDEN_DEMO_MCP_URL = f"{url}/demo/mcp/"
        call_command("seed_demo")
        agent = Agent.objects.get(name="crm-assistant")
        _, secret = agent_key_issue(agent=agent, by=agent.owner)
        yield {"url": url, "secret": secret, "agent": agent}


def test_the_demo_crm_is_listed_called_escalated_denied_and_its_data_stays_where_it_is_cleared(crm, personas,
                                                                                                client_for):
    import asyncio

    from governance.approvals import approval_decide

    def mcp(work):
        return asyncio.run(_session(f"{crm['url']}/mcp/crm/", crm["secret"], work))

    listed = sorted(tool.name for tool in mcp(lambda session: session.list_tools()).tools)
    assert listed == ["add_note", "lookup_customer"]  # export_customers: forbidden by no-bulk-exports

    # The demo CRM answers Warden only: the agent's own key gets nothing from it directly.
    direct = httpx.post(f"{crm['url']}/demo/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        headers={"Authorization": f"Bearer {crm['secret']}",
                                 "Accept": "application/json, text/event-stream"})
    assert direct.status_code == 401

    note = {"customer_id": "c-1001", "note": "Asked about seats <script>alert(1)</script>"}
    waiting = mcp(lambda session: session.call_tool("add_note", note))
    assert error_of(waiting)["type"] == "warden_pending_approval"
    approval = Approval.objects.get(action_id=error_of(waiting)["action_id"])
    assert approval.group == "security"
    page = client_for("security").get(f"/approvals/{approval.pk}/").content.decode()
    assert "Asked about seats &lt;script&gt;" in page and "<script>alert" not in page  # what it would send, escaped
    approval_decide(approval=approval, by=personas["security"], verdict="approve", comment="fine")
    added = mcp(lambda session: session.call_tool("add_note", note))
    assert not added.isError and added.content[0].text == "note added to c-1001"
    from agents.gateway.demo_mcp import NOTES

    assert NOTES[-1] == note

    denied = mcp(lambda session: session.call_tool("export_customers", {}))
    assert error_of(denied)["reasons"] == ["forbidden by policy no-bulk-exports"]

    record = mcp(lambda session: session.call_tool("lookup_customer", {"customer_id": "c-1001"}))
    assert json.loads(record.content[0].text)["email"] == "ada.lindqvist@northwind.example"
    assert Action.objects.get(pk=record.meta["warden/action_id"]).actual_cost_micros == 1_000

    # Having read a confidential record, the agent may not send on what it holds to a model cleared for
    # internal data, through the other gateway.
    client = openai.OpenAI(base_url=f"{crm['url']}/v1", api_key=crm["secret"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Summarise"}])
    assert "derived from tool crm/lookup_customer (confidential)" in raised.value.body["message"]
