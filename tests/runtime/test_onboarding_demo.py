"""The onboarding team of the demo fleet: analysis, decision and communication agents on new customers.

The communication agent's attempt to post analysed customer data to the partner agency's CRM (outside the
company) is stopped by the flow rule, with the source named, in its run and in the audit trace; the same
note, not derived from the customer data, goes through.
"""

from __future__ import annotations

import pytest

from agents.models import Agent, AgentRun, RunStep
from audit.models import AuditEvent
from governance.models import Action

from .conftest import drive


def drive_tree(run, rounds: int = 12) -> None:
    """Advance a run and the runs it delegates to, as workers would, until none needs a worker."""
    for _ in range(rounds):
        active = list(AgentRun.objects.filter(correlation_id=run.correlation_id,
                                              status__in=["queued", "running"]).order_by("created_at"))
        if not active:
            return
        for each in active:
            drive(each)
    raise AssertionError("the runs did not finish")


@pytest.fixture
def demo(db, settings, runtime_settings):
    from django.core.management import call_command

    settings.WARDEN_DEMO_PASSWORD = "demo-pass-123"
    call_command("seed_demo")


def test_the_welcome_writer_is_stopped_from_posting_customer_data_outside_and_says_so(demo, start):
    lead = Agent.objects.get(name="onboarding-lead")
    run = start(lead, "This week's new customers")
    drive_tree(run)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    analyst_run, writer_run = AgentRun.objects.filter(parent=run).order_by("created_at")
    assert (analyst_run.agent.name, writer_run.agent.name) == ("onboarding-analyst", "welcome-writer")
    read = RunStep.objects.get(run=analyst_run, kind="read")
    assert read.label == 2 and read.result["count"] >= 1 and "email" not in read.result["masked"]

    # The writer's post to the partner CRM: denied by the flow rule, naming the customer data and where it was read.
    posted = RunStep.objects.get(run=writer_run, name="partner-crm")
    assert posted.status == "denied" and posted.label_in == 2
    action = Action.objects.get(pk=posted.action_id)
    assert action.reasons[0].startswith(
        "data flow: endpoint hooks.partner-crm.example is cleared for public data; this request derived from "
        f"customers (confidential) at step 0 of run {str(analyst_run.pk)[:8]}")
    assert writer_run.result["posted"] is False and writer_run.result["why"] == action.reasons
    assert run.result["label"] == "confidential"
    # One trace: the lead's run, both children, every gate decision; the denial is in it.
    trace = AuditEvent.objects.filter(correlation_id=run.correlation_id)
    assert trace.filter(action="gate.tool.http", outcome="denied").count() == 1
    assert {event.agent_name for event in trace} >= {"onboarding-lead", "onboarding-analyst", "welcome-writer"}


def test_the_same_note_not_derived_from_customer_data_is_posted(demo, start, personas):
    writer = Agent.objects.get(name="welcome-writer")
    run = start(writer, "Welcome the new customers. Decision: kickoff calls for everyone this week.")
    drive(run)
    assert run.status == "succeeded", run.error
    posted = RunStep.objects.get(run=run, name="partner-crm")
    assert posted.status == "succeeded" and posted.label_in == 0
    assert run.result["posted"] is True
