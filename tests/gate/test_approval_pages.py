"""The approval pages: the queue, a request's page, deciding with and without htmx, the badge, asking for budget."""

from __future__ import annotations

import pytest

from billing.models import Budget
from governance.models import Approval
from tests.conftest import ask

PRICEY = {"input_tokens": 1000, "max_output_tokens": 1000, "purpose": "summarise <b>everything</b>"}


@pytest.fixture
def waiting(bot, policy):
    policy("all", "permit(principal, action, resource);")
    policy("gpt4o-needs-finance", '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");')
    body = ask(bot, resource="gpt-4o", context=PRICEY).json()
    return Approval.objects.get(pk=body["approval"]["id"])


def test_the_queue_shows_what_waits_with_buttons_only_for_those_who_may_decide(client_for, waiting):
    finance = client_for("finance").get("/approvals/").content.decode()
    assert f'data-id="{waiting.pk}"' in finance and "Approve" in finance
    assert "summarise &lt;b&gt;everything&lt;/b&gt;" in finance  # the agent's words, escaped
    admin = client_for("admin").get("/approvals/").content.decode()  # admins see every queue ...
    assert f'data-id="{waiting.pk}"' in admin and "this request is for finance to decide" in admin.lower()
    assert 'hx-post="/approvals/' not in admin  # ... but decide only their own group's
    assert f'data-id="{waiting.pk}"' not in client_for("security").get("/approvals/").content.decode()
    assert client_for("viewer").get("/approvals/").status_code == 403
    assert client_for("finance").get("/approvals/?status=decided").content.decode().count("data-id=") == 0
    assert client_for("finance").get("/approvals/?age=7").status_code == 400


def test_deciding_from_the_queue_with_htmx_returns_the_row(client_for, waiting):
    finance = client_for("finance")
    too_long = finance.post(f"/approvals/{waiting.pk}/approve/", {"comment": "x" * 2001, "from": "queue"},
                            HTTP_HX_REQUEST="true")
    assert too_long.status_code == 200 and too_long["X-Warden-Status"] == "400"
    assert "At most 2000 characters" in too_long.content.decode()
    waiting.refresh_from_db()
    assert waiting.status == "pending"
    done = finance.post(f"/approvals/{waiting.pk}/approve/", {"comment": "fine", "from": "queue"}, HTTP_HX_REQUEST="true")
    html = done.content.decode()
    assert done["HX-Trigger"] == "approvals-changed" and 'data-status="approved"' in html and "by finance-user" in html
    again = finance.post(f"/approvals/{waiting.pk}/deny/", {"from": "queue"}, HTTP_HX_REQUEST="true")
    assert again["X-Warden-Status"] == "409" and "already approved by finance-user" in again.content.decode()
    waiting.refresh_from_db()
    assert waiting.status == "approved"


def test_without_javascript_a_decision_redirects_to_the_request(client_for, waiting):
    finance = client_for("finance")
    response = finance.post(f"/approvals/{waiting.pk}/deny/", {"comment": "no"})
    assert response.status_code == 302 and response["Location"] == f"/approvals/{waiting.pk}/"
    page = finance.get(response["Location"]).content.decode()
    assert "Request denied." in page and "denied by finance-user: no" in page


def test_a_request_page_for_those_who_may_see_it(client_for, waiting):
    page = client_for("finance").get(f"/approvals/{waiting.pk}/").content.decode()
    for fact in ("bot", "admin-user", "research", "gpt-4o", "$0.0125", "gpt4o-needs-finance", "summarise"):
        assert fact in page, fact
    assert client_for("security").get(f"/approvals/{waiting.pk}/").status_code == 404
    assert client_for("finance").get("/approvals/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert client_for("admin").post(f"/approvals/{waiting.pk}/approve/").status_code == 302  # refused, with a message
    waiting.refresh_from_db()
    assert waiting.status == "pending"
    assert client_for("viewer").post(f"/approvals/{waiting.pk}/approve/").status_code == 403


def test_the_request_page_refreshes_its_decision_panel_for_those_who_may_see_it(client_for, waiting, personas):
    from governance.approvals import approval_decide

    part = f"/approvals/{waiting.pk}/?part=decision"
    pending = client_for("admin").get(part, HTTP_HX_REQUEST="true").content.decode()
    assert "this request is for finance to decide" in pending and "<html" not in pending
    approval_decide(approval=waiting, by=personas["finance"], verdict="deny", comment="not this month")
    panel = client_for("admin").get(part, HTTP_HX_REQUEST="true").content.decode()
    assert "not this month" in panel and "<form" not in panel
    assert 'id="approval-status" hx-swap-oob="true">denied<' in panel
    assert 'id="approval-timing" hx-swap-oob="true"' in panel and "expires in" not in panel
    assert client_for("security").get(part, HTTP_HX_REQUEST="true").status_code == 404
    assert client_for("viewer").get(part, HTTP_HX_REQUEST="true").status_code == 403


def test_the_badge_counts_what_waits_for_the_users_groups(client_for, waiting):
    assert ">1<" in client_for("finance").get("/approvals/badge/").content.decode()
    assert "badge" not in client_for("security").get("/approvals/badge/").content.decode()


def test_the_owner_asks_for_more_budget_from_the_agent_page(client_for, bot, personas, team):
    from billing.services import budget_create

    budget = budget_create(scope="team", team=team, monthly_limit_micros=1_000_000, by=personas["finance"])
    admin = client_for("admin")  # owns bot
    page = admin.get(f"/agents/{bot.agent.pk}/").content.decode()
    assert "Budgets covering bot" in page and "Ask for more" in page
    bad = admin.post(f"/agents/{bot.agent.pk}/budget-requests/", {"budget": budget.pk, "monthly_limit": "0.5",
                                                                  "reason": "more"})
    assert bad.status_code == 400 and "Ask for more than" in bad.content.decode()
    ok = admin.post(f"/agents/{bot.agent.pk}/budget-requests/", {"budget": budget.pk, "monthly_limit": "2.50",
                                                                 "reason": "launch week"})
    assert ok.status_code == 302
    request = Approval.objects.get(kind="budget_increase")
    assert (request.requested_limit_micros, request.requested_by, request.group) == (2_500_000, personas["admin"], "finance")
    assert "Ask for more" not in client_for("viewer").get(f"/agents/{bot.agent.pk}/").content.decode()
    client_for("finance").post(f"/approvals/{request.pk}/approve/")
    assert Budget.objects.get(pk=budget.pk).monthly_limit_micros == 2_500_000
