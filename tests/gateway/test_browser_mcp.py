"""An admin registers an MCP server in the console, discovers its tools and prices one; an agent's MCP client
calls it through Warden; the call and its cost show on the server's page."""

import asyncio
import concurrent.futures
import json

import pytest

from agents.models import McpServer, McpTool
from governance.models import Action
from tests.browser import SHOTS, asgi_server, chromium, sign_in
from tests.conftest import PASSWORD
from tests.gateway.fake_mcp import fake_mcp
from tests.gateway.test_mcp_gateway import _session

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_registers_a_server_and_prices_a_tool_and_sees_an_agents_call(settings, personas, make_agent, policy):
    from agents.services import agent_key_issue

    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
    policy("all", "permit(principal, action, resource);")
    agent = make_agent("crm-helper", allowed_tools=["crm/lookup_customer"])
    _, secret = agent_key_issue(agent=agent, by=personas["admin"])
    with fake_mcp() as upstream, asgi_server() as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        sign_in(page, url, "admin-user", PASSWORD)
        page.wait_for_url(f"{url}/")
        page.click("nav >> text=MCP servers")
        page.wait_for_selector("h1:has-text('MCP servers')")
        assert "the MCP gateway answers no agent yet" in page.inner_text("main")
        page.fill("#id_name", "CRM!")
        page.fill("#id_url", "file:///etc/passwd")
        page.click("main button:has-text('Register')")
        errors = page.inner_text("form.card")
        assert "lower-case letters" in errors and "http(s) URL" not in errors  # the name is checked first
        page.fill("#id_name", "crm")
        page.click("main button:has-text('Register')")
        assert "http(s) URL" in page.inner_text("form.card")
        page.screenshot(path=str(SHOTS / "mcp-server-errors.png"), full_page=True)
        page.fill("#id_url", upstream.url)
        page.fill("#id_description", "Customer records")
        page.click("main button:has-text('Register')")
        page.wait_for_selector("text=MCP server crm registered")
        assert "No tools registered: agents see none." in page.inner_text("main")

        page.click("button:has-text('Discover')")
        page.wait_for_selector("h2:has-text('What crm offers')")
        offered = page.inner_text("section.card")
        assert "lookup_customer" in offered and "delete_everything" in offered
        row = page.locator("section.card tr", has_text="lookup_customer")
        row.locator("button:has-text('Register')").click()  # registered without a price: denied until priced
        page.wait_for_selector("text=has no price: the gate denies every call of it until it has one.")
        assert "no price" in page.inner_text("section:has(h2:has-text('Tools'))")
        page.click("a:has-text('change')")
        page.fill("#id_price", "0.002")
        page.click("button:has-text('Save tool')")
        page.wait_for_selector("text=Tool crm/lookup_customer saved.")
        tool = McpTool.objects.get(server__name="crm", name="lookup_customer")
        assert tool.input_schema["required"] == ["customer_id"] and McpServer.objects.get().created_by == personas["admin"]

        # The agent's own program, on a thread of its own (Playwright's sync API keeps an event loop on this one).
        with concurrent.futures.ThreadPoolExecutor(1) as agent_side:
            result = agent_side.submit(asyncio.run, _session(
                f"{url}/mcp/crm/", secret, lambda session: session.call_tool("lookup_customer", {"customer_id": "c-9"}))
            ).result(60)
        assert not result.isError and json.loads(result.content[0].text)["id"] == "c-9"
        assert Action.objects.get().actual_cost_micros == 2_000
        page.goto(f"{url}/mcp-servers/crm/")
        calls = page.inner_text("section:has(h2:has-text('Recent calls'))")
        assert "crm-helper" in calls and "crm/lookup_customer" in calls and "$0.002" in calls and "succeeded" in calls
        page.screenshot(path=str(SHOTS / "mcp-server.png"), full_page=True)
        assert [call["tool"] for call in upstream.calls] == ["lookup_customer"]

        # Changing a tool starts from what is registered; its price is finance's to change now.
        page.click("a:has-text('change')")
        assert page.input_value("#id_name") == "lookup_customer" and "customer_id" in page.input_value("#id_input_schema")
        page.fill("#id_price", "0.003")
        page.select_option("#id_returns", label="confidential")
        page.click("button:has-text('Save tool')")
        page.wait_for_selector("text=finance changes prices")
        page.screenshot(path=str(SHOTS / "mcp-tool-errors.png"), full_page=True)
        page.fill("#id_price", "")
        page.click("button:has-text('Save tool')")
        page.wait_for_selector("text=Tool crm/lookup_customer saved.")
        tool.refresh_from_db()
        assert tool.input_schema["required"] == ["customer_id"] and tool.get_returns_display() == "confidential"
        assert "$0.002" in page.inner_text("section:has(h2:has-text('Tools'))")
