"""One journey per person on Warden's card, end to end, as they would live it.

Live server (real ASGI application in a thread: pages, websockets, the OpenAI-compatible gateway), a real
Celery worker process, real browsers (Playwright and the system Chromium), and agents that talk to Warden as
agents do: the official `openai` client on the gateway, plain HTTP on the REST API. Screenshots of every
step go to var/screenshots/journey-*.png.
"""

from __future__ import annotations

import re
import threading

import httpx
import jsonschema
import openai
import pytest
from django.db.models import Sum

from agents.models import Agent, AgentRun
from billing.models import Budget, BudgetPeriod, LedgerEntry
from billing.services import dollars
from governance.models import Action, Approval
from tests.browser import SHOTS, asgi_server, chromium, sign_in
from tests.conftest import PASSWORD
from tests.runtime.cluster import wait_until

from .conftest import PROGRAMS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ESCALATE_4O = '@escalate("finance")\nforbid(principal, action, resource == Model::"gpt-4o");'
VIEW = {"width": 1400, "height": 950}


def person(browser, url: str, username: str):
    page = browser.new_context(viewport=VIEW).new_page()
    sign_in(page, url, username, PASSWORD)
    page.wait_for_url(f"{url}/")
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"journey-{name}.png"), full_page=True)


def test_admin_registers_an_agent_whose_expensive_gateway_call_finance_approves_live(
        worker, upstream, prices, policy, personas, team, roles):
    """1. An admin registers an agent and issues its key in the browser; the agent, through the gateway with
    the official `openai` client, asks for an expensive model that escalates; finance, in a second browser
    context, sees the request arrive live and approves it; the call completes, and its cost is on the spend page."""
    policy("all", "permit(principal, action, resource);")
    policy("gpt-4o-needs-finance", ESCALATE_4O)
    with asgi_server() as url, chromium() as browser:
        admin = person(browser, url, "admin-user")
        admin.goto(f"{url}/agents/new/")
        admin.fill("#id_name", "Quarterly Writer")  # bad input first: not a slug
        admin.click("main button:has-text('Save')")
        assert "valid “slug”" in admin.inner_text("main")
        admin.fill("#id_name", "quarterly-writer")
        admin.select_option("#id_owner", label="admin-user")
        admin.select_option("#id_team", label="Research")
        admin.check("input[value=researcher]")
        admin.fill("#id_allowed_models", "gpt-4o-mini, gpt-4o")
        admin.click("main button:has-text('Save')")
        admin.wait_for_selector("h1:has-text('quarterly-writer')")
        admin.fill("input[name=name]", "laptop")
        admin.click("button:has-text('Issue key')")
        secret = admin.inner_text("#new-secret").strip()
        assert secret.startswith("wdn_agent_")
        shot(admin, "1-key-issued")

        finance = person(browser, url, "finance-user")
        finance.goto(f"{url}/approvals/")
        finance.wait_for_selector("#live-status:has-text('live')")
        finance.evaluate("window.notReloaded = true")

        client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0, timeout=60)
        answers: list = []
        caller = threading.Thread(target=lambda: answers.append(client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Draft the quarterly report"}], max_tokens=20)))
        caller.start()

        finance.wait_for_selector("#approval-rows tr[data-id]:has-text('quarterly-writer')", timeout=15_000)
        assert finance.evaluate("window.notReloaded") is True  # arrived live
        assert upstream.calls == []  # nothing went upstream while waiting
        shot(finance, "1-approval-arrived")
        approval = Approval.objects.get(status="pending")
        finance.goto(f"{url}/approvals/{approval.pk}/")
        finance.fill("#decision textarea[name=comment]", "the report is planned")
        finance.click("#decision button:has-text('Approve')")
        finance.wait_for_selector("#decision .badge.approved", timeout=10_000)
        caller.join(30)
        assert answers and answers[0].choices[0].message.content.startswith("fake answer"), answers
        assert len(upstream.calls) == 1

        action = Action.objects.get(agent__name="quarterly-writer")
        entry = LedgerEntry.objects.get(action=action)
        assert action.status == "succeeded" and entry.cost_micros > 0
        finance.goto(f"{url}/budgets/spend/")
        spend = finance.inner_text("main")
        assert "quarterly-writer" in spend and dollars(entry.cost_micros) in spend, spend
        shot(finance, "1-spend")


def test_finance_budgets_a_team_watches_the_fleet_fill_it_raises_it_on_request_and_the_agent_is_denied(
        worker, settings):
    """2. Finance sets a monthly budget for a team in the browser, watches the demo fleet's spend fill it live,
    raises it after a budget-increase request, and sees the agent denied at the limit."""
    from agents.demo import demo_fleet_ensure
    from agents.services import agent_key_issue
    from governance.services import demo_users_ensure

    demo_users_ensure(password=PASSWORD)
    demo_fleet_ensure(owner_username="admin")
    scout = Agent.objects.get(name="welcome-writer")  # the demo fleet's onboarding agent
    model = "gpt-4o-mini"
    _, secret = agent_key_issue(agent=scout, by=scout.owner)
    api = httpx.Client(base_url="", headers={"Authorization": f"Bearer {secret}"}, timeout=30)

    with asgi_server() as url, chromium() as browser:
        api.base_url = url

        def spend(input_tokens: int) -> dict:
            asked = api.post("/api/v1/actions/", json={"action": "llm.call", "resource": model, "context": {
                "input_tokens": input_tokens, "max_output_tokens": 10}}).json()
            if asked["outcome"] == "allowed":
                api.post(f"/api/v1/actions/{asked['id']}/complete/", json={
                    "status": "succeeded", "usage": {"input_tokens": input_tokens, "output_tokens": 10}})
            return asked

        finance = person(browser, url, "finance")
        finance.goto(f"{url}/budgets/")
        finance.select_option("#id_scope", "team")
        finance.select_option("#id_team", "onboarding")
        finance.fill("#id_monthly_limit", "-1")  # bad input first
        finance.click("main button:has-text('Set budget')")
        assert finance.locator(".field.invalid").count() >= 1
        finance.fill("#id_monthly_limit", "0.05")
        finance.fill("#id_thresholds", "50, 80, 100")
        finance.click("main button:has-text('Set budget')")
        try:
            finance.wait_for_selector("text=Budget for team onboarding set.", timeout=10_000)
        except Exception:
            shot(finance, "2-failed")
            raise AssertionError(finance.inner_text("main")[:3000])
        budget = Budget.objects.get(team__name="onboarding", scope="team")
        finance.evaluate("window.notReloaded = true")
        row = "#budgets-live table.budgets tr:has-text('team onboarding')"
        assert "0% spent" in finance.inner_text(row)

        first = spend(50_000)
        assert first["outcome"] == "allowed", first
        spent = BudgetPeriod.objects.get(budget=budget).spent_micros
        percent = spent * 100 // budget.monthly_limit_micros
        assert 0 < percent < 100, spent
        # The page moves by itself to what the database holds (htmx refresh, no reload).
        finance.wait_for_selector(f"{row}:has-text('{dollars(spent)}')", timeout=15_000)
        assert finance.evaluate("window.notReloaded") is True
        shot(finance, "2-filling")

        while (answer := spend(50_000))["outcome"] == "allowed":
            pass
        assert any("budget team onboarding would be exceeded" in reason for reason in answer["reasons"]), answer

        # The agent asks for more; finance sees the request arrive and grants it.
        asked = api.post(f"/api/v1/budgets/{budget.pk}/increase-requests/", json={
            "monthly_limit_micros": 100_000, "reason": "the literature review needs twice the reading"})
        assert asked.status_code == 201, asked.text
        finance.goto(f"{url}/approvals/")
        finance.wait_for_selector("#approval-rows tr[data-id]:has-text('literature review')", timeout=15_000)
        finance.goto(f"{url}/approvals/{asked.json()['id']}/")
        shot(finance, "2-increase-request")
        finance.click("#decision button:has-text('Approve')")
        finance.wait_for_selector("#decision .badge.approved", timeout=10_000)
        budget.refresh_from_db()
        assert budget.monthly_limit_micros == 100_000

        finance.goto(f"{url}/budgets/")
        finance.evaluate("window.notReloaded = true")
        assert "$0.10" in finance.inner_text(row)
        while (answer := spend(50_000))["outcome"] == "allowed":
            pass
        assert any("budget team onboarding would be exceeded" in reason for reason in answer["reasons"]), answer
        period = BudgetPeriod.objects.get(budget=budget)
        assert period.spent_micros + period.reserved_micros <= 100_000
        finance.wait_for_selector(f"{row}:has-text('{dollars(period.spent_micros)}')", timeout=15_000)
        assert finance.evaluate("window.notReloaded") is True
        shot(finance, "2-denied-at-the-limit")
    api.close()


def test_security_follows_an_agent_verifies_exports_and_suspends_it_and_its_run_stops(
        worker, runner_agent, personas, export_dir):
    """3. Security filters the audit timeline to one agent, opens a trace, watches new events arrive, runs
    chain verification from the page, exports CSV, and suspends the agent: its running run stops."""
    from agents.runtime.services import run_start

    agent = runner_agent("endless", name="loop-bot")
    other = runner_agent("endless", name="quiet-bot")
    run = run_start(agent=agent, objective="keep asking", by=personas["admin"])
    wait_until(lambda: Action.objects.filter(agent=agent).count() >= 2, timeout=60,
               message="the worker did not start the run", logs=worker.logs)
    with asgi_server() as url, chromium() as browser:
        security = person(browser, url, "security-user")
        security.goto(f"{url}/audit/")
        security.fill("input[name=agent]", "loop-bot")
        security.click("form.filters button:has-text('Filter')")
        security.wait_for_url(re.compile(r".*agent=loop-bot.*"))
        security.wait_for_selector("#live-status:has-text('live')")
        assert other.name not in security.inner_text("#event-rows")

        trace_link = security.locator("#event-rows tr[data-id] a[href*='/audit/trace/']").first
        trace_link.click()
        security.wait_for_url(re.compile(r".*/audit/trace/.+"))
        assert "loop-bot" in security.inner_text("main")
        shot(security, "3-trace")
        security.go_back()
        security.wait_for_selector("#live-status:has-text('live')")

        before = security.locator("#event-rows tr[data-id]").count()
        security.evaluate("window.notReloaded = true")
        security.wait_for_function(f"document.querySelectorAll('#event-rows tr[data-id]').length > {before}",
                                   timeout=20_000)
        assert security.evaluate("window.notReloaded") is True
        assert other.name not in security.inner_text("#event-rows")

        security.click("button:has-text('Verify the chains')")
        security.wait_for_selector("#verification[data-ok='true']", timeout=30_000)
        assert "Intact." in security.inner_text("#verification")
        shot(security, "3-verified")

        security.click("main button:has-text('Export CSV')")
        security.wait_for_selector("#export-progress[data-status='done']", timeout=60_000)  # the worker's job
        with security.expect_download() as download:
            security.click("#export-progress a:has-text('Download')")
        lines = open(download.value.path()).read().splitlines()
        assert len(lines) > 2 and all("quiet-bot" not in line for line in lines[1:])
        shot(security, "3-exported")

        security.goto(f"{url}/agents/{agent.pk}/")
        security.click("button:has-text('Suspend agent')")
        security.fill("#dlg-suspend textarea[name=reason]", "loops without end")
        security.click("button:has-text('Suspend now')")
        security.wait_for_selector(".badge.suspended")
        wait_until(lambda: AgentRun.objects.get(pk=run.pk).status in ("cancelled", "failed"), timeout=30,
                   message="the suspended agent's run did not stop", logs=worker.logs)
        agent.refresh_from_db()
        # Nothing was allowed for it after the suspension (the gate refuses it, whatever the worker still tries).
        assert not Action.objects.filter(agent=agent, outcome="allowed", created_at__gt=agent.status_changed_at).exists()
        security.goto(f"{url}/runs/{run.pk}/")
        assert AgentRun.objects.get(pk=run.pk).status in security.inner_text(".run-facts")
        shot(security, "3-run-stopped")


def test_a_platform_engineer_registers_an_agent_and_runs_it_with_only_the_api_and_its_openapi_document(
        worker, api_for, team, roles, prices, permitted):
    """4. A platform engineer registers an agent and starts a run using only the REST API and the OpenAPI
    document: every request is built from the document's paths and checked against its request schema, and
    every answer against its response schema."""
    from tests.runtime.cluster import wait_until as until

    token = api_for("admin")._credentials["HTTP_AUTHORIZATION"]
    with asgi_server() as url:
        web = httpx.Client(base_url=url, timeout=30)
        document = web.get("/api/schema/", params={"format": "json"}).json()
        components = document["components"]

        def operation(method: str, path: str) -> dict:
            found = document["paths"][path][method]
            return found

        def json_schema(node):
            """OpenAPI 3.0's `nullable: true` is JSON Schema's `null` among the types."""
            if isinstance(node, list):
                return [json_schema(item) for item in node]
            if not isinstance(node, dict):
                return node
            node = {key: json_schema(value) for key, value in node.items()}
            if node.pop("nullable", False):
                if "type" in node:
                    node["type"] = [node["type"], "null"]
                else:
                    node = {"anyOf": [node, {"type": "null"}]}
            return node

        def schema_of(part: dict) -> dict:
            return json_schema({**part, "components": components})

        def call(method: str, path: str, *, auth: str, body: dict | None = None, **params) -> dict:
            spec = operation(method, path)
            if body is not None:
                jsonschema.validate(body, schema_of(spec["requestBody"]["content"]["application/json"]["schema"]))
            response = web.request(method.upper(), path.format(**params), json=body, headers={"Authorization": auth})
            answered = spec["responses"].get(str(response.status_code))
            assert answered is not None, (method, path, response.status_code, response.text)
            content = next(iter(answered.get("content", {}).values()), None)
            data = response.json() if response.content else None
            if content is not None:
                jsonschema.validate(data, schema_of(content["schema"]))
            assert response.is_success, (method, path, response.status_code, data)
            return data

        agent = call("post", "/api/v1/agents/", auth=token, body={
            "name": "nightly-digest", "owner": "admin-user", "team": team.name, "roles": ["researcher"],
            "allowed_models": ["gpt-4o-mini"], "program": f"{PROGRAMS}.steps",
            "description": "Writes the nightly digest"})
        key = call("post", "/api/v1/agents/{agent_id}/keys/", auth=token, body={"name": "ci"}, agent_id=agent["id"])
        me = call("get", "/api/v1/agents/me/", auth=f"Bearer {key['secret']}")
        assert me["name"] == "nightly-digest"
        run = call("post", "/api/v1/agents/{agent_id}/runs/", auth=token, body={"objective": "3"},  # the test program makes that many model calls
                   agent_id=agent["id"])
        done = until(lambda: (r := call("get", "/api/v1/runs/{run_id}/", auth=token, run_id=run["id"]))["status"]
                     in ("succeeded", "failed") and r, timeout=60, message="the run did not end", logs=worker.logs)
        assert done["status"] == "succeeded", (done.get("error"), done)
        spent = Action.objects.filter(agent__name="nightly-digest").aggregate(total=Sum("reserved_micros"))
        assert done["steps_done"] >= 1 and spent["total"] is not None
        web.close()
