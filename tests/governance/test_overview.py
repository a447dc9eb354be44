"""The fleet overview (the home page): what the fleet does now, per group, and it updates itself."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from governance.models import Alert
from tests.browser import SHOTS, asgi_server, chromium, sign_in
from tests.conftest import PASSWORD, ask


@pytest.fixture
def busy(bot, policy, personas):
    from billing.services import budget_create

    policy("all", "permit(principal, action, resource);")
    policy("big-needs-finance", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    budget_create(scope="team", team=bot.agent.team, monthly_limit_micros=1_000_000, by=personas["finance"])
    for _ in range(3):
        action = ask(bot).json()["id"]
        bot.post(f"/api/v1/actions/{action}/complete/", {"status": "succeeded",
                                                         "usage": {"input_tokens": 100, "output_tokens": 50}},
                 format="json")
    ask(bot, resource="claude-opus")  # denied: not an allowed model
    ask(bot, resource="gpt-4o")  # to finance
    Alert.objects.create(kind="burst", agent=bot.agent, key="k1", title="bot made 99 requests in 60 s",
                         normal="0.1 requests per 60 s", observed="99 requests in the last 60 s",
                         evidence="/audit/?agent=bot", created_at=timezone.now())
    return bot


@pytest.mark.django_db
def test_each_group_sees_its_part_of_the_fleet_and_each_number_links_to_its_page(busy, client_for):
    pages = {name: client_for(name).get("/").content.decode() for name in ("admin", "finance", "security", "viewer")}
    admin = pages["admin"]
    assert re.search(r'id="agents-active">\s*1<', admin) and 'href="/agents/"' in admin
    assert re.search(r'id="decisions-rate">\s*1.0<', admin)  # 5 decisions in the last 5 minutes
    assert re.search(r'id="approvals-pending">\s*1<', admin) and 'href="/approvals/"' in admin
    assert "bot made 99 requests in 60 s" in admin and 'href="/audit/?agent=bot"' not in admin  # no audit.view
    assert "team research" in admin and "Forecast" in admin  # the budget, with its forecast
    assert "Top spenders" in admin and f'href="/agents/{busy.agent.pk}/"' in admin
    assert "Pending approvals" in pages["finance"] and "Spend this month" in pages["finance"]
    assert "Spend this month" not in pages["security"] and "Latest alerts" in pages["security"]
    viewer = pages["viewer"]
    assert "Pending approvals" not in viewer and "Latest alerts" not in viewer and "Spend this month" in viewer
    assert "99 requests" not in viewer
    fragment = client_for("admin").get("/", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "<html" not in fragment.content.decode()
    assert 'id="fleet"' in fragment.content.decode()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_overview_updates_itself(busy, settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
    with asgi_server() as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        sign_in(page, url, "admin-user", PASSWORD)
        page.wait_for_url(f"{url}/")
        assert page.inner_text("#approvals-pending").strip() == "1"
        page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
        ask(busy, resource="gpt-4o")  # another request for finance: the page shows it without a reload
        page.wait_for_function("document.querySelector('#approvals-pending').innerText.trim() === '2'",
                               timeout=15_000)
        assert page.locator("svg.chart.decisions rect").count() >= 1


@pytest.mark.django_db
def test_the_alert_list_is_for_those_who_watch_agents(busy, client_for):
    page = client_for("security").get("/alerts/?agent=bot").content.decode()
    assert "bot made 99 requests in 60 s" in page and 'href="/audit/?agent=bot"' in page
    assert client_for("viewer").get("/alerts/").status_code == 403
    assert "No alerts." in client_for("finance").get("/alerts/?agent=nobody").content.decode()


@pytest.mark.django_db
def test_evidence_in_the_audit_log_is_linked_for_security_and_the_agent_page_for_others(busy, client_for):
    assert 'href="/audit/?agent=bot"' in client_for("security").get("/alerts/").content.decode()
    finance = client_for("finance").get("/alerts/").content.decode()
    assert 'href="/audit/?agent=bot"' not in finance and f'href="/agents/{busy.agent.pk}/"' in finance
