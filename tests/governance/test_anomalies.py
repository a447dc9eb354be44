"""Anomaly alerts: an agent measured against its own history. A spend jump and a first use of an expensive
model make one alert each, however many requests show them; an agent behaving as usual makes none."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from billing.models import LedgerEntry
from governance.anomalies import anomaly_scan
from governance.models import Action, Alert
from tests.conftest import ask

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"input_tokens": 1_000, "max_output_tokens": 200}
BIG = {"input_tokens": 100_000, "max_output_tokens": 10_000}


def call(client, model: str, context: dict) -> Action:
    answer = ask(client, resource=model, context=context)
    assert answer.status_code == 201 and answer.json()["outcome"] == "allowed", answer.content
    action_id = answer.json()["id"]
    done = client.post(f"/api/v1/actions/{action_id}/complete/",
                       {"status": "succeeded", "usage": {"input_tokens": context["input_tokens"],
                                                         "output_tokens": context["max_output_tokens"]}},
                       format="json")
    assert done.status_code == 200, done.content
    return Action.objects.get(pk=action_id)


def history(client, model: str, count: int, days: int = 7) -> None:
    """The agent's usual week: `count` small calls, spread back over `days` days (as if made then)."""
    now = timezone.now()
    for number in range(count):
        action = call(client, model, SMALL)
        when = now - dt.timedelta(days=days) + dt.timedelta(hours=number * (days * 24 - 2) / count)
        Action.objects.filter(pk=action.pk).update(created_at=when, allowed_at=when, completed_at=when)
        LedgerEntry.objects.filter(action=action).update(occurred_at=when)


@pytest.fixture
def usual(bot, policy):
    policy("all", "permit(principal, action, resource);")
    history(bot, "gpt-4o-mini", 30)
    return bot


def test_a_spend_jump_on_a_new_expensive_model_makes_one_alert_of_each(usual, make_agent, agent_client, settings,
                                                                      eager_tasks, mailoutbox, personas):
    personas["security"].email = "security@example.test"
    personas["security"].save()
    usual.agent.owner.email = "owner@example.test"
    usual.agent.owner.save()
    calm = agent_client(make_agent("calm", allowed_models=["gpt-4o-mini"]))
    history(calm, "gpt-4o-mini", 30)
    assert anomaly_scan() == []  # the usual week is not an anomaly

    for _ in range(12):  # one request after another, scanned after each (as beat would, more often)
        call(usual, "gpt-4o", BIG)
        call(calm, "gpt-4o-mini", SMALL)
        anomaly_scan()
    alerts = {alert.kind: alert for alert in Alert.objects.all()}
    assert sorted(alerts) == ["new_resource", "spend_rate"] and Alert.objects.count() == 2
    assert {alert.agent.name for alert in alerts.values()} == {"bot"}
    spend = alerts["spend_rate"]
    assert "usual rate" in spend.title and "per 60 minutes" in spend.normal and spend.observed.startswith("$")
    # Raised at the first expensive call (over the minimum and the usual rate), and not again for the next 11.
    first_big = LedgerEntry.objects.filter(agent=usual.agent, resource="gpt-4o").order_by("occurred_at").first()
    assert spend.details["spent_micros"] == first_big.cost_micros
    first = alerts["new_resource"]
    assert first.details["resource"] == "gpt-4o" and "gpt-4o-mini" in first.normal
    assert first.evidence.startswith("/audit/?agent=bot")
    assert AuditEvent.objects.filter(action="anomaly.detected").count() == 2
    titles = {f"[Warden] {alert.title}" for alert in alerts.values()}
    sent = [message for message in mailoutbox if message.subject in titles]  # (finance hears of its spike too)
    assert [sorted(message.to) for message in sent] == [["owner@example.test", "security@example.test"]] * 2
    assert "Evidence: /audit/?agent=bot" in sent[0].body
    assert Alert.objects.filter(emailed_at__isnull=False).count() == 2
    assert usual.agent.__class__.objects.get(pk=usual.agent.pk).status == "active"  # suspension is off by default


def test_a_rule_may_suspend_the_agent(usual, settings, eager_tasks):
    settings.WARDEN_ANOMALY_RULES = '{"spend_rate": {"suspend": true}, "new_resource": {"enabled": false}}'
    for _ in range(3):
        call(usual, "gpt-4o", BIG)
    (alert,) = anomaly_scan()
    assert alert.kind == "spend_rate"
    usual.agent.refresh_from_db()
    assert usual.agent.status == "suspended" and "anomaly" in usual.agent.status_reason
    assert Alert.objects.get().suspended
    denied = ask(usual, resource="gpt-4o-mini", context=SMALL)
    assert denied.json()["outcome"] == "denied"


def test_the_webhook_receives_a_signed_alert(usual, settings, webhook_receiver):
    import hashlib
    import hmac
    import json

    from governance.anomalies import deliver

    webhook_url, received = webhook_receiver
    settings.WARDEN_ALERT_WEBHOOK_URL = f"{webhook_url}/hook"
    settings.WARDEN_ALERT_WEBHOOK_SECRET = "hook-secret"
    settings.WARDEN_PUBLIC_URL = "https://warden.example"
    call(usual, "gpt-4o", BIG)
    (alert, *_) = anomaly_scan()
    deliver(alert.pk)
    expected = "sha256=" + hmac.new(b"hook-secret", received["body"], hashlib.sha256).hexdigest()
    assert received["signature"] == expected
    body = json.loads(received["body"])
    assert body["agent"] == "bot" and body["evidence"].startswith("https://warden.example/audit/?agent=bot")
    alert.refresh_from_db()
    assert alert.webhook_status == "204"


def test_a_young_agent_is_not_unusual_and_urls_are_one_host(make_agent, agent_client, policy, prices, personas,
                                                             eager_tasks, mailoutbox):
    from billing.services import price_set

    policy("all", "permit(principal, action, resource);")
    price_set(kind="endpoint", name="*", per_call_micros=1_000, by=personas["finance"])
    young = agent_client(make_agent("young", allowed_models=["gpt-4o"]))
    for _ in range(3):
        call(young, "gpt-4o", BIG)  # its first hour, and a busy one: there is no usual to compare with yet
    assert anomaly_scan() == []

    history(young, "gpt-4o", 30)  # now it has a week behind it, all of it big calls
    urls = ["https://new.example/a", "https://new.example/b?page=2", "https://NEW.example./c",
            "https://new.example/d\nBcc: someone@example.test"]
    for url in urls:
        answer = ask(young, action="tool.http", resource=url, context={})
        assert answer.json()["outcome"] == "allowed", answer.content
    alerts = [alert for alert in anomaly_scan() if alert.kind == "new_resource"]  # (its spend is unusual too now)
    assert [alert.details["resource"] for alert in alerts] == ["new.example"]  # four URLs, one host
    assert "\n" not in alerts[0].title and anomaly_scan() == []


def test_bursts_and_denials_are_one_alert_each(usual):
    for number in range(32):  # 32 requests in a few seconds, every one denied (a model it may not call)
        assert ask(usual, resource="claude-opus").json()["outcome"] == "denied"
        if number % 8 == 7:
            anomaly_scan()
    assert sorted(Alert.objects.values_list("kind", flat=True)) == ["burst", "denial_rate"]
    denial = Alert.objects.get(kind="denial_rate")
    # Raised at the first scan past the minimum (16 requests), and not again at the next two.
    assert "16 of its 16 requests denied" in denial.observed and "0% of its requests denied" in denial.normal
    assert "32 requests" in Alert.objects.get(kind="burst").observed


def test_a_streak_of_failing_runs_is_one_alert_however_long_it_grows(make_agent):
    from agents.models import AgentRun

    agent = make_agent("flaky")

    def ended(status: str, minutes_ago: int) -> None:
        when = timezone.now() - dt.timedelta(minutes=minutes_ago)
        AgentRun.objects.create(agent=agent, program="agents.runtime.demo.paper_scout", objective="x", status=status, source="api",
                                correlation_id=f"run-{status}-{minutes_ago}", created_at=when, started_at=when,
                                finished_at=when, error="the upstream is down" if status == "failed" else "")

    ended("succeeded", 50)
    for minutes_ago in (40, 30, 20):
        ended("failed", minutes_ago)
    (first,) = anomaly_scan()
    assert first.kind == "failing_runs" and "the upstream is down" in first.observed
    ended("failed", 10)  # the streak goes on: no second alert
    assert anomaly_scan() == []
    ended("succeeded", 8)
    for minutes_ago in (6, 4, 2):
        ended("failed", minutes_ago)
    (second,) = anomaly_scan()  # a new streak after a success: a new alert
    assert second.key != first.key and Alert.objects.filter(kind="failing_runs").count() == 2
