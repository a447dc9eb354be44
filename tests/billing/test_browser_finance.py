import pytest

from billing.models import Budget
from tests.browser import SHOTS, chromium, sign_in
from tests.conftest import PASSWORD, ask

pytestmark = pytest.mark.browser


def test_finance_sets_a_budget_in_the_browser_and_watches_it_fill(live_server, personas, bot, policy):
    policy("all", "permit(principal, action, resource);")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, live_server.url, "finance-user", PASSWORD)
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/budgets/")
        page.select_option("#id_scope", "team")
        page.select_option("#id_team", "research")
        page.fill("#id_monthly_limit", "0.002")
        page.fill("#id_thresholds", "90, 50")
        page.click("main button:has-text('Set budget')")
        assert "increasing order" in page.inner_text("main")
        page.fill("#id_thresholds", "50, 80, 100")
        page.click("main button:has-text('Set budget')")
        page.wait_for_selector("text=Budget for team research set.")
        assert Budget.objects.get().monthly_limit_micros == 2000
        action_id = ask(bot, context={"input_tokens": 1000, "max_output_tokens": 1000}).json()["id"]
        bot.post(f"/api/v1/actions/{action_id}/complete/",  # 10,000 input tokens at $0.15 per million
                 {"status": "succeeded", "usage": {"input_tokens": 10_000, "output_tokens": 0}}, format="json")
        page.reload()
        assert "75% spent" in page.inner_text("table.budgets")
        page.screenshot(path=str(SHOTS / "budget-filling.png"), full_page=True)
        denied = ask(bot, context={"input_tokens": 1000, "max_output_tokens": 1000}).json()
        assert denied["outcome"] == "denied" and "budget team research would be exceeded" in denied["reasons"][0]
