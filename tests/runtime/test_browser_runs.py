"""A run started in a real browser and watched live to the end, with a real Celery worker doing the work.

The page is served by the real ASGI application (websockets); the worker is a `celery worker` process
on the test database, taking its tasks from a private Redis and pushing "this run changed" through the
channel layer the page listens on. Screenshots go to var/screenshots/.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from django.db.models import Sum

from agents.models import AgentRun, RunStep
from agents.runtime.runner import run_is_held
from billing.models import BudgetPeriod
from billing.services import dollars
from governance.models import Action
from tests.browser import SHOTS, asgi_server, chromium, sign_in
from tests.conftest import PASSWORD

from .cluster import simulated_worker, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]


@pytest.fixture
def worker(tmp_path, runtime_settings):
    """One real worker: tasks from a private broker, live pushes to the session's Redis (the page's)."""
    with simulated_worker(tmp_path, runtime_settings, name="runner",
                          WARDEN_SIMULATED_LATENCY_MS="700") as group:  # slow enough to watch each step arrive
        yield group


def step_count(page) -> int:
    return int(page.inner_text("#run-steps"))


def test_a_run_started_from_the_agent_page_is_watched_live_to_the_end(runner_agent, worker, personas):
    agent = runner_agent("planned", name="planner")
    with asgi_server() as url, chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        sign_in(page, url, "admin-user", PASSWORD)
        page.wait_for_url(f"{url}/")
        page.goto(f"{url}/agents/{agent.pk}/")

        # Bad input first: a blank objective comes back in the open dialog, and nothing starts.
        page.click("text=Start a run")
        page.fill("#dlg-run [name=objective]", "   ")
        page.click("#dlg-run button.primary")
        page.wait_for_selector("#dlg-run[open] .error:has-text('This field is required.')")
        page.screenshot(path=str(SHOTS / "run-start-blank.png"))
        assert not AgentRun.objects.exists()

        page.fill("#dlg-run [name=objective]", "Compare three vector databases for the support search")
        page.click("#dlg-run button.primary")
        page.wait_for_url(re.compile(rf"{re.escape(url)}/runs/[0-9a-f-]{{36}}/$"))
        run = AgentRun.objects.get()
        assert (run.source, run.started_by.username) == ("browser", "admin-user")
        page.wait_for_selector("#live-status:has-text('live')")
        page.evaluate("window.notReloaded = true")
        (SHOTS / "run-live-midway.png").unlink(missing_ok=True)

        # The worker takes it up; the page follows it step by step without a reload.
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status, steps = page.get_attribute(".run-facts", "data-status"), step_count(page)
            if not seen or seen[-1] != (status, steps):
                seen.append((status, steps))
                if status == "running" and steps >= 1 and not (SHOTS / "run-live-midway.png").exists():
                    page.screenshot(path=str(SHOTS / "run-live-midway.png"), full_page=True)
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.1)
        run.refresh_from_db()
        assert run.status == "succeeded", (run.status, run.error, worker.logs())
        assert seen[-1] == ("succeeded", run.steps_done)
        # It was seen queued or running with fewer steps than at the end, and more than two distinct states:
        # the page moved by itself as the worker went.
        assert any(status == "running" and 0 < steps < run.steps_done for status, steps in seen), seen
        assert len({steps for _, steps in seen}) >= 3, seen
        assert page.evaluate("window.notReloaded") is True
        page.screenshot(path=str(SHOTS / "run-live-done.png"), full_page=True)

        # What the page shows is what the database holds.
        steps = list(RunStep.objects.filter(run=run).order_by("index"))
        assert page.locator("#step-rows tr[data-status='succeeded']").count() == len(steps) == run.steps_done
        assert run.cost_micros > 0 and page.inner_text("#run-cost") == dollars(run.cost_micros)
        assert len(page.locator(".card:has(h2:text('Plan')) ol li").all()) == len(run.plan["steps"])
        assert "simulated provider" in page.inner_text("#run-live")


def test_a_run_is_cancelled_from_its_page_and_the_page_says_so_at_once(runner_agent, worker, personas):
    from agents.runtime.services import run_start

    run = run_start(agent=runner_agent("endless", name="looper"), objective="never ends", by=personas["admin"])
    with asgi_server() as url, chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        sign_in(page, url, "security-user", PASSWORD)
        page.wait_for_url(f"{url}/")
        page.goto(f"{url}/runs/{run.pk}/")
        page.wait_for_selector("#live-status:has-text('live')")
        page.wait_for_function("Number(document.querySelector('#run-steps').textContent) >= 2", timeout=60000)
        page.click("#run-live button.danger")
        page.fill("#dlg-cancel [name=reason]", "looping for no reason")
        page.click("#dlg-cancel button.danger")
        page.wait_for_selector("#run-status:has-text('Cancelled')", timeout=15000)
        page.screenshot(path=str(SHOTS / "run-cancelled.png"), full_page=True)
    run.refresh_from_db()
    assert (run.status, run.cancelled_by.username) == ("cancelled", "security-user")
    # The worker lets go of the run (its lock is free once it has stopped at its next step); after that a
    # worker that took it up again would find it cancelled. Nothing of it is left running or holding money.
    wait_until(lambda: not run_is_held(run.pk), timeout=20, message="the worker kept the run", logs=worker.logs)
    steps = list(RunStep.objects.filter(run=run).order_by("index"))
    assert len(steps) >= 2 and not [step for step in steps if step.status == "running"]
    assert {step.status for step in steps[:-1]} == {"succeeded"} and steps[-1].status in ("succeeded", "cancelled")
    assert not Action.objects.filter(agent=run.agent, outcome="allowed", status="decided").exists()  # none open
    assert BudgetPeriod.objects.aggregate(total=Sum("reserved_micros"))["total"] in (None, 0)


def test_the_onboarding_teams_leak_is_stopped_and_the_run_pages_show_labels_and_the_reason(worker, personas,
                                                                                           settings):
    """The demo's onboarding team run by a real worker (one process: a parent waiting for its child holds
    none): the lead delegates to the analyst, then to the welcome writer, whose post to the partner CRM is
    denied by the flow rule. The pages say where the data came from."""
    from django.core.management import call_command

    from agents.models import Agent
    from agents.runtime.services import run_start

    settings.WARDEN_DEMO_PASSWORD = PASSWORD
    call_command("seed_demo", stdout=open(os.devnull, "w"))
    run = run_start(agent=Agent.objects.get(name="onboarding-lead"), objective="This week's new customers",
                    by=personas["admin"])
    with asgi_server() as url, chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        sign_in(page, url, "security-user", PASSWORD)
        page.wait_for_url(f"{url}/")
        page.goto(f"{url}/runs/{run.pk}/")
        page.wait_for_selector("#live-status:has-text('live')")
        page.wait_for_selector(".run-facts[data-status='succeeded']", timeout=90_000)
        assert "confidential" in page.inner_text("#run-label")
        page.screenshot(path=str(SHOTS / "onboarding-lead.png"), full_page=True)

        writer_run = AgentRun.objects.get(parent=run, agent__name="welcome-writer")
        page.click(f"#step-rows a[href='/runs/{writer_run.pk}/']")
        page.wait_for_url(f"{url}/runs/{writer_run.pk}/")
        denied = page.locator("#step-rows tr[data-status='denied']")
        assert denied.count() == 1
        text = denied.inner_text()
        assert "partner-crm" in text and "carries confidential" in text
        assert "data flow: endpoint hooks.partner-crm.example is cleared for public data" in text
        assert "derived from customers (confidential) at step 0" in text
        assert "Delegated by a run of onboarding-lead" in page.inner_text("body")
        page.screenshot(path=str(SHOTS / "onboarding-writer-denied.png"), full_page=True)

        page.click("text=audit trace")
        page.wait_for_selector("text=gate.tool.http")
        page.screenshot(path=str(SHOTS / "onboarding-trace.png"), full_page=True)
        page.goto(f"{url}/data-views/")
        assert "Where data may go" in page.content()
        page.screenshot(path=str(SHOTS / "data-views-serving.png"), full_page=True)
