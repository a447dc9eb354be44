import pytest

from tests.browser import SHOTS, chromium, sign_in
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

NAV = {
    "admin": ["Agents", "Runs", "Policies", "Data views", "MCP servers", "Approvals", "Budgets"],
    "finance": ["Agents", "Runs", "Data views", "MCP servers", "Approvals", "Budgets"],
    "security": ["Agents", "Runs", "Policies", "Data views", "MCP servers", "Approvals", "Audit"],
    "viewer": ["Agents", "Runs", "Policies", "Data views", "MCP servers", "Budgets"],
}


def test_each_group_signs_in_and_sees_only_its_sections(live_server, personas):
    with chromium() as browser:
        for group, expected in NAV.items():
            page = browser.new_page()
            sign_in(page, live_server.url, f"{group}-user", PASSWORD)
            page.wait_for_url(f"{live_server.url}/")
            assert [a.inner_text() for a in page.query_selector_all("header nav a")] == expected
            page.screenshot(path=str(SHOTS / f"overview-{group}.png"))
            # a section outside the group is refused, not hidden behind a broken page
            page.goto(f"{live_server.url}/audit/")
            assert ("Audit timeline" in page.content()) == (group == "security")
            page.close()


def test_a_wrong_password_is_refused_with_a_message(live_server, personas):
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, live_server.url, "admin-user", "not the password")
        assert "didn't match" in page.inner_text("[role=alert]")
        assert page.url.startswith(f"{live_server.url}/login/")
        page.screenshot(path=str(SHOTS / "sign-in-refused.png"))


def test_repeated_wrong_passwords_lock_the_sign_in_with_a_message(live_server, personas):
    with chromium() as browser:
        page = browser.new_page()
        for _ in range(5):
            sign_in(page, live_server.url, "finance-user", "guess")
        assert "Too many failed sign-ins for finance-user" in page.inner_text("[role=alert]")
        sign_in(page, live_server.url, "finance-user", PASSWORD)  # the right one, too late
        assert "Too many failed sign-ins" in page.inner_text("[role=alert]")
        assert page.url.startswith(f"{live_server.url}/login/")
        page.screenshot(path=str(SHOTS / "sign-in-locked.png"))
