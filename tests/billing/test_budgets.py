"""Budgets at the gate: estimates, reservations, settlement, overage, sweep, months, alerts."""

import datetime as dt
import zoneinfo

import pytest
from django.utils import timezone

from agents.models import Team
from audit.models import AuditEvent
from billing import services
from billing.models import BudgetPeriod, LedgerEntry, Notification
from governance.gate import actions_expire
from governance.models import Action
from tests.conftest import ask

PERMIT_ALL = "permit(principal, action, resource);"
# gpt-4o-mini: $0.15 in / $0.60 out per million tokens
SMALL = {"input_tokens": 1000, "max_output_tokens": 1000}  # 150 + 600 = 750 micro-dollars


@pytest.fixture
def open_gate(policy):
    policy("all", PERMIT_ALL)


def budget(scope="organisation", limit=10_000, by=None, **kwargs):
    from django.contrib.auth import get_user_model

    by = by or get_user_model().objects.get(username="finance-user")
    return services.budget_create(scope=scope, monthly_limit_micros=limit, by=by, **kwargs)


def period_of(b):
    return BudgetPeriod.objects.get(budget=b, period_start=services.period_start())


def test_the_estimate_comes_from_the_price_and_is_reserved_at_every_covering_budget(bot, open_gate):
    org = budget("organisation", 1_000_000)
    team = budget("team", 1_000_000, team=bot.agent.team)
    mine = budget("agent", 1_000_000, agent=bot.agent)
    body = ask(bot, context=SMALL).json()
    assert body["outcome"] == "allowed"
    assert body["estimated_cost_micros"] == 750 and body["reserved"] == 750
    for b in (org, team, mine):
        assert (period_of(b).reserved_micros, period_of(b).spent_micros) == (750, 0)


def test_an_unpriced_model_or_tool_is_denied_not_free(bot, open_gate, make_agent, agent_client):
    agent = make_agent("pricey", allowed_models=["mystery-model"], allowed_tools=["unpriced-tool"])
    client = agent_client(agent)
    body = ask(client, resource="mystery-model").json()
    assert body["outcome"] == "denied"
    assert body["reasons"] == ["model mystery-model has no price; finance must price it before it can be used"]
    tool = ask(client, "tool.call", "unpriced-tool", {}).json()
    assert tool["outcome"] == "denied" and "tool unpriced-tool has no price" in tool["reasons"][0]


def test_an_exhausted_budget_denies_with_a_reason_naming_it(bot, open_gate):
    budget("team", 1000, team=bot.agent.team)
    assert ask(bot, context=SMALL).json()["outcome"] == "allowed"  # 750 of 1000
    body = ask(bot, context=SMALL).json()
    assert body["outcome"] == "denied"
    assert body["reasons"] == [
        "budget team research would be exceeded: spent $0.00 + reserved $0.00075 + this $0.00075 > monthly limit $0.001"
    ]
    assert body["reserved"] == 0


def test_an_escalating_budget_sends_the_action_to_finance(bot, open_gate):
    budget("agent", 1000, agent=bot.agent, on_exceed="escalate")
    ask(bot, context=SMALL)
    body = ask(bot, context=SMALL).json()
    assert body["outcome"] == "pending_approval"
    assert body["approval"]["group"] == "finance"
    assert period_of(bot.agent.budgets.get()).reserved_micros == 750  # nothing reserved for the waiting one


def test_reservation_is_all_or_none(bot, open_gate):
    org = budget("organisation", 1_000_000)
    team = budget("team", 1000, team=bot.agent.team)
    ask(bot, context=SMALL)
    assert ask(bot, context=SMALL).json()["outcome"] == "denied"
    assert period_of(org).reserved_micros == 750  # the org had room, but nothing was taken from it


def test_completion_settles_to_the_actual_cost_and_writes_the_ledger(bot, open_gate):
    team = budget("team", 1_000_000, team=bot.agent.team)
    action_id = ask(bot, context=SMALL).json()["id"]
    usage = {"model": "gpt-4o-mini", "input_tokens": 1000, "output_tokens": 200}  # 150 + 120
    response = bot.post(f"/api/v1/actions/{action_id}/complete/", {"status": "succeeded", "usage": usage}, format="json")
    assert response.status_code == 200 and response.json()["actual_cost_micros"] == 270
    period = period_of(team)
    assert (period.spent_micros, period.reserved_micros) == (270, 0)
    entry = LedgerEntry.objects.get(action_id=action_id)
    assert (entry.cost_micros, entry.input_tokens, entry.output_tokens, entry.overage_micros, entry.team) == (270, 1000, 200, 0, "research")


def test_a_failure_releases_everything(bot, open_gate):
    team = budget("team", 1_000_000, team=bot.agent.team)
    action_id = ask(bot, context=SMALL).json()["id"]
    bot.post(f"/api/v1/actions/{action_id}/complete/", {"status": "failed"}, format="json")
    assert (period_of(team).spent_micros, period_of(team).reserved_micros) == (0, 0)
    assert LedgerEntry.objects.get(action_id=action_id).cost_micros == 0


def test_an_overage_is_recorded_flagged_and_counted(bot, open_gate):
    team = budget("team", 1_000_000, team=bot.agent.team)
    action_id = ask(bot, context=SMALL).json()["id"]
    # reserved 750 for 1,000 + 1,000 tokens; the prompt was longer: 9,000 input and 1,000 output, 1,350 + 600
    bot.post(f"/api/v1/actions/{action_id}/complete/",
             {"status": "succeeded", "usage": {"input_tokens": 9000, "output_tokens": 1000}}, format="json")
    entry = LedgerEntry.objects.get(action_id=action_id)
    assert (entry.cost_micros, entry.overage_micros) == (1950, 1200)
    assert period_of(team).spent_micros == 1950


def test_unfinished_reservations_are_released_by_the_sweep_with_an_audit_event(bot, open_gate):
    team = budget("team", 1_000_000, team=bot.agent.team)
    action_id = ask(bot, context=SMALL).json()["id"]
    assert actions_expire(older_than=dt.timedelta(minutes=5)) == 0  # too young
    assert actions_expire(older_than=dt.timedelta(0)) == 1
    assert period_of(team).reserved_micros == 0
    assert Action.objects.get(pk=action_id).status == "expired"
    assert AuditEvent.objects.filter(action="budget.reservation.expire").count() == 1
    assert actions_expire(older_than=dt.timedelta(0)) == 0  # once only
    # The agent did act: its late report is still money spent, recorded and counted, flagged unreserved.
    late = bot.post(f"/api/v1/actions/{action_id}/complete/",
                    {"status": "succeeded", "usage": {"input_tokens": 1000, "output_tokens": 500}}, format="json")
    assert late.status_code == 200, late.json()
    entry = LedgerEntry.objects.get(action_id=action_id)
    assert (entry.cost_micros, entry.unreserved, entry.reserved_micros, entry.usage_source) == (450, True, 0, "agent")
    assert (period_of(team).spent_micros, period_of(team).reserved_micros) == (450, 0)
    assert Action.objects.get(pk=action_id).status == "succeeded"


def test_a_new_month_starts_clean_without_a_job(bot, open_gate, settings):
    settings.WARDEN_TIMEZONE = "Europe/Paris"
    team = budget("team", 1000, team=bot.agent.team)
    ask(bot, context=SMALL)
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    last_minute = dt.datetime(2026, 11, 30, 23, 59, tzinfo=paris)
    first_minute = dt.datetime(2026, 12, 1, 0, 0, tzinfo=paris)
    assert services.period_start(last_minute) == dt.date(2026, 11, 1)
    assert services.period_start(first_minute) == dt.date(2026, 12, 1)
    # 23:30 UTC on 30 November is already December in Paris
    assert services.period_start(dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.timezone.utc)) == dt.date(2026, 12, 1)
    from django.db import transaction

    with transaction.atomic():
        fresh = services.reserve(agent=bot.agent, action_id=Action.objects.first().pk, micros=900, at=first_minute)
        transaction.set_rollback(True)
    assert fresh.outcome == "allowed"  # November's 750 does not count in December


def test_threshold_alerts_fire_once_per_threshold_per_period(bot, open_gate, django_capture_on_commit_callbacks, mailoutbox, personas):
    personas["finance"].email = "fin@example.test"
    personas["finance"].save()
    team = budget("team", 1500, team=bot.agent.team, thresholds=[50, 80, 100])
    with django_capture_on_commit_callbacks(execute=False):
        for _ in range(2):
            action_id = ask(bot, context=SMALL).json()["id"]
            bot.post(f"/api/v1/actions/{action_id}/complete/", {"status": "succeeded"}, format="json")  # 750
    assert sorted(Notification.objects.values_list("threshold", flat=True)) == [50, 80, 100]
    from billing.alerts import deliver

    deliver(Notification.objects.get(threshold=100).pk)
    assert len(mailoutbox) == 1 and "team research has used 100%" in mailoutbox[0].body
    assert mailoutbox[0].to == ["fin@example.test"]


def test_the_webhook_is_signed(settings):
    from billing.alerts import sign

    body = b'{"id": 1}'
    assert sign(body, "s3cret") == "sha256=" + __import__("hmac").new(b"s3cret", body, "sha256").hexdigest()


def test_a_spend_spike_against_the_agents_own_baseline_alerts(bot, open_gate, settings):
    from billing.alerts import check_spike

    settings.WARDEN_SPIKE_MIN_MICROS = 1000
    now = timezone.now()
    base = {"agent": bot.agent, "agent_name": "bot", "team": "research", "kind": "llm.call", "resource": "gpt-4o-mini",
            "reserved_micros": 0, "status": "succeeded", "period_start": services.period_start(now)}
    actions = [ask(bot, context=SMALL).json()["id"] for _ in range(3)]
    LedgerEntry.objects.create(action_id=actions[0], cost_micros=1000, occurred_at=now - dt.timedelta(days=2), **base)
    assert check_spike(agent=bot.agent, at=now) is None
    LedgerEntry.objects.create(action_id=actions[1], cost_micros=50_000, occurred_at=now - dt.timedelta(minutes=5), **base)
    assert check_spike(agent=bot.agent, at=now) is not None
    assert check_spike(agent=bot.agent, at=now) is None  # once per day
    assert "spent $0.05 in the last hour" in Notification.objects.get(kind="spike").message


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"limit": -1}, "monthly_limit_micros"),
        ({"limit": 10.5}, "monthly_limit_micros"),
        ({"limit": 10**13}, "monthly_limit_micros"),
        ({"thresholds": [80, 50]}, "thresholds"),
        ({"thresholds": [50, 150]}, "thresholds"),
        ({"on_exceed": "shrug"}, "on_exceed"),
    ],
)
def test_bad_budgets_are_refused(personas, kwargs, field):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as error:
        budget(**{"limit": 1000, **kwargs})
    assert field in error.value.message_dict
    from billing.models import Budget

    assert not Budget.objects.exists()


def test_a_retired_agent_cannot_get_a_budget(make_agent, personas):
    from django.core.exceptions import ValidationError

    from agents.services import agent_retire

    agent = make_agent("old")
    agent_retire(agent=agent, by=personas["admin"], reason="gone")
    with pytest.raises(ValidationError, match="retired"):
        budget("agent", 1000, agent=agent)


def test_one_budget_per_target(personas, team):
    from django.core.exceptions import ValidationError

    budget("team", 1000, team=team)
    with pytest.raises(ValidationError, match="already has a budget"):
        budget("team", 2000, team=team)


@pytest.mark.parametrize("kwargs", [{"input_per_million_micros": -5}, {"per_call_micros": 0.5}, {"kind": "vibes"}, {"name": ""}])
def test_bad_prices_are_refused(personas, kwargs):
    from django.core.exceptions import ValidationError

    from billing.models import Price

    with pytest.raises(ValidationError):
        services.price_set(**{"kind": "model", "name": "m", "by": personas["finance"], **kwargs})
    assert not Price.objects.exists()


def test_a_new_price_applies_from_its_effective_date(personas):
    services.price_set(kind="model", name="m", input_per_million_micros=1_000_000, by=personas["finance"],
                       effective_from=timezone.now() - dt.timedelta(days=1))
    services.price_set(kind="model", name="m", input_per_million_micros=2_000_000, by=personas["finance"],
                       effective_from=timezone.now() + dt.timedelta(days=1))
    assert services.price_at("model", "m", timezone.now())[0] == 1_000_000
    assert services.price_at("model", "m", timezone.now() + dt.timedelta(days=2))[0] == 2_000_000


@pytest.mark.parametrize("micros,text", [(0, "$0.00"), (750, "$0.00075"), (30_000, "$0.03"), (1_234_500_000, "$1,234.50"), (9_245, "$0.009245")])
def test_amounts_are_shown_exactly(micros, text):
    assert services.dollars(micros) == text


def test_the_webhook_receives_a_signed_alert(bot, open_gate, settings, django_capture_on_commit_callbacks,
                                              webhook_receiver):
    import hmac

    webhook_url, received = webhook_receiver
    settings.WARDEN_ALERT_WEBHOOK_URL = f"{webhook_url}/hook"
    settings.WARDEN_ALERT_WEBHOOK_SECRET = "hook-secret"
    budget("team", 1000, team=bot.agent.team, thresholds=[50])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        action_id = ask(bot, context=SMALL).json()["id"]
        bot.post(f"/api/v1/actions/{action_id}/complete/",
                 {"status": "succeeded", "usage": {"input_tokens": 0, "output_tokens": 1000}}, format="json")  # 600
    deliveries = [c for c in callbacks if "_create" in c.__qualname__]
    assert len(deliveries) == 1  # delivery is queued only once the settlement commits
    from billing.alerts import deliver

    deliver(Notification.objects.get().pk)
    expected = "sha256=" + hmac.new(b"hook-secret", received["body"], "sha256").hexdigest()
    assert received["signature"] == expected
    assert Notification.objects.get().webhook_status == "204"
