"""The approval story in real browsers, against the real ASGI server (websockets, long-poll)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from audit.models import AuditEvent
from governance.models import Approval
from tests.browser import SHOTS, asgi_server, chromium, sign_in
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

EXPENSIVE = {"input_tokens": 100_000, "max_output_tokens": 100_000, "purpose": "draft the annual report"}  # $1.25


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]


def http(url: str, token: str, body: dict | None = None, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_finance_approves_live_and_the_waiting_agent_runs_within_a_second(make_agent, policy, prices, personas):
    from agents.services import agent_key_issue
    from governance.policy_templates import TEMPLATES

    policy("baseline", TEMPLATES["baseline-permit"][1])
    policy("expensive", TEMPLATES["expensive-calls-need-finance"][1])
    agent = make_agent("writer", allowed_models=["gpt-4o"])  # owned by admin-user
    _, secret = agent_key_issue(agent=agent, by=personas["admin"])
    with asgi_server() as url, chromium() as browser:
        finance = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        sign_in(finance, url, "finance-user", PASSWORD)
        finance.wait_for_url(f"{url}/")
        finance.goto(f"{url}/approvals/")
        finance.wait_for_selector("#live-status:has-text('live')")
        assert "Nothing is waiting" in finance.inner_text("#approval-rows")

        # The agent asks over the REST API; the request escalates to finance.
        asked = http(f"{url}/api/v1/actions/", secret, {"action": "llm.call", "resource": "gpt-4o", "context": EXPENSIVE,
                                                         "correlation_id": "annual-report-0001"})
        assert asked["outcome"] == "pending_approval"
        approval_id = asked["approval"]["id"]

        # It appears in finance's queue without a reload, and the badge counts it.
        row = f"#approval-rows tr[data-id='{approval_id}']"
        finance.wait_for_selector(row, timeout=5000)
        finance.wait_for_selector("#approval-badge .badge:has-text('1')", timeout=15000)
        assert "draft the annual report" in finance.inner_text(row)
        finance.screenshot(path=str(SHOTS / "approvals-queue.png"), full_page=True)

        # The agent's owner sees it but has no approve button.
        owner = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        sign_in(owner, url, "admin-user", PASSWORD)
        owner.wait_for_url(f"{url}/")
        owner.goto(f"{url}/approvals/{approval_id}/")
        assert owner.locator("button:has-text('Approve')").count() == 0
        assert "this request is for finance to decide" in owner.inner_text("#decision")
        owner.wait_for_selector("#decision[data-connected]")  # listening (and caught up) before finance decides

        # The agent waits for the answer (long-poll).
        answer: dict = {}

        def wait() -> None:
            answer["body"] = http(f"{url}/api/v1/actions/{asked['id']}/?wait=30", secret, timeout=40)
            answer["at"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.5)

        finance.goto(f"{url}/approvals/{approval_id}/")
        assert "draft the annual report" in finance.inner_text("main")
        assert "$1.25" in finance.inner_text("main")
        finance.screenshot(path=str(SHOTS / "approval-detail.png"), full_page=True)
        finance.fill("#decision textarea[name=comment]", "within the quarter's plan")
        clicked = time.monotonic()
        finance.click("#decision button:has-text('Approve')")
        finance.wait_for_selector("#decision .badge.approved", timeout=5000)
        waiter.join(10)
        assert answer["body"]["outcome"] == "allowed" and answer["body"]["reserved"] == 1_250_000
        # Woken by the decision, not by its 30 s wait running out (a loose bound: this box is shared and noisy).
        assert answer["at"] - clicked < 15, answer["at"] - clicked
        timing = finance.inner_text("#approval-timing")
        assert "expires in" not in timing and "approved 20" in timing, timing
        finance.screenshot(path=str(SHOTS / "approval-decided.png"), full_page=True)

        # The owner's detail page, open meanwhile, shows the decision without a reload.
        owner.wait_for_selector("#approval-status.approved", timeout=5000)
        assert "by finance-user" in owner.inner_text("#decision")
        assert "expires in" not in owner.inner_text("#approval-timing")

        # The owner's queue page shows who decided.
        owner.goto(f"{url}/approvals/?status=decided")
        owner.wait_for_selector(f"#approval-rows tr[data-id='{approval_id}']:has-text('by finance-user')")

        # Bad input in the browser: deciding again is refused with a message, nothing changes.
        finance.goto(f"{url}/approvals/{approval_id}/")
        assert finance.locator("#decision button:has-text('Approve')").count() == 0

    story = list(AuditEvent.objects.filter(correlation_id="annual-report-0001").order_by("id")
                 .values_list("action", "actor_name"))
    assert story == [("gate.llm.call", "writer"), ("approval.approve", "finance-user"),
                     ("approval.approved", "finance-user")]
    assert Approval.objects.get(pk=approval_id).note == "within the quarter's plan"


def test_a_co_approvers_verdict_arrives_live_and_a_comment_being_typed_survives(make_agent, policy, prices, personas):
    from agents.services import agent_key_issue
    from governance.approvals import approval_decide
    from governance.policy_templates import TEMPLATES
    from tests.conftest import make_user

    policy("baseline", TEMPLATES["baseline-permit"][1])
    policy("two-keys", '@escalate("finance")\n@approvals("2")\nforbid(principal, action, resource == Model::"gpt-4o");')
    other = make_user("finance-two", "finance")
    agent = make_agent("writer", allowed_models=["gpt-4o"])
    _, secret = agent_key_issue(agent=agent, by=personas["admin"])
    with asgi_server() as url, chromium() as browser:
        asked = http(f"{url}/api/v1/actions/", secret, {"action": "llm.call", "resource": "gpt-4o", "context": EXPENSIVE})
        approval_id = asked["approval"]["id"]
        finance = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        sign_in(finance, url, "finance-user", PASSWORD)
        finance.wait_for_url(f"{url}/")
        finance.goto(f"{url}/approvals/{approval_id}/")
        finance.wait_for_selector("#decision[data-connected]")  # the page listens before the other approver acts
        finance.fill("#decision textarea[name=comment]", "checked the invoice")

        approval_decide(approval=Approval.objects.get(pk=approval_id), by=other, verdict="approve", comment="fine by me")
        finance.wait_for_selector("#decision li:has-text('finance-two')", timeout=5000)
        assert finance.input_value("#decision textarea[name=comment]") == "checked the invoice"
        assert finance.inner_text("#approval-status") == "pending"

        finance.click("#decision button:has-text('Approve')")
        finance.wait_for_selector("#approval-status.approved", timeout=5000)
    approval = Approval.objects.get(pk=approval_id)
    assert approval.status == "approved"
    assert sorted(approval.decisions.values_list("comment", flat=True)) == ["checked the invoice", "fine by me"]
