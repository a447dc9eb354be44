import pytest

from agents.models import Agent, AgentKey
from tests.browser import SHOTS, chromium, sign_in
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser


def test_an_admin_registers_issues_a_key_and_security_pulls_the_kill_switch(live_server, personas, team, roles):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, live_server.url, "admin-user", PASSWORD)
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/agents/new/")
        page.fill("#id_name", "Bad Name!")
        page.click("main button:has-text('Save')")
        assert "valid “slug”" in page.inner_text("main")
        page.screenshot(path=str(SHOTS / "register-errors.png"), full_page=True)
        page.fill("#id_name", "night-owl")
        page.select_option("#id_owner", label="admin-user")
        page.select_option("#id_team", label="Research")
        page.check("input[value=researcher]")
        page.fill("#id_allowed_models", "gpt-4o-mini")
        page.click("main button:has-text('Save')")
        page.wait_for_selector("h1:has-text('night-owl')")
        agent = Agent.objects.get(name="night-owl")
        page.fill("input[name=name]", "ci")
        page.click("button:has-text('Issue key')")
        secret = page.inner_text("#new-secret").strip()
        assert secret.startswith("wdn_agent_")
        page.screenshot(path=str(SHOTS / "key-shown-once.png"))
        page.click("button:has-text('I have stored it')")
        assert AgentKey.objects.filter(agent=agent, lookup=secret[10:18]).exists()
        page.close()

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, live_server.url, "security-user", PASSWORD)
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/agents/{agent.pk}/")
        page.click("button:has-text('Suspend agent')")
        page.fill("#dlg-suspend textarea[name=reason]", "exfiltration attempt")
        page.screenshot(path=str(SHOTS / "kill-switch.png"))
        page.click("button:has-text('Suspend now')")
        page.wait_for_selector(".badge.suspended")
        assert "exfiltration attempt" in page.inner_text("main")
        agent.refresh_from_db()
        assert agent.status == "suspended"
        page.screenshot(path=str(SHOTS / "agent-suspended.png"), full_page=True)
