"""Reads of the money side: budgets with their month, spend, forecast, ledger export."""

from __future__ import annotations

import calendar
import re
import datetime as dt
import zoneinfo
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from governance.access import can

from .models import Budget, BudgetPeriod, LedgerEntry, Notification, Price
from .services import period_start

GROUPS = {"agent": "agent_name", "team": "team", "model": "resource", "day": "day"}


MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")


def parse_month(value: str | None) -> dt.date:
    """'2026-11' -> date(2026, 11, 1); None -> this month. ValueError for anything else.

    Years 2000..9998 only: a month's bounds are computed in WARDEN_TIMEZONE,
    and year 1 or 9999 would step outside what a datetime can hold.
    """
    if not value:
        return period_start()
    match = MONTH.match(value)
    if not match or not 2000 <= int(match.group(1)) <= 9998 or not 1 <= int(match.group(2)) <= 12:
        raise ValueError("Give the month as YYYY-MM.")
    return dt.date(int(match.group(1)), int(match.group(2)), 1)


@dataclass
class BudgetLine:
    budget: Budget
    spent: int
    reserved: int

    @property
    def limit(self) -> int:
        return self.budget.monthly_limit_micros

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent - self.reserved)

    @property
    def spent_pct(self) -> float:
        return min(100.0, self.spent * 100 / self.limit) if self.limit else 100.0

    @property
    def reserved_pct(self) -> float:
        return min(100.0 - self.spent_pct, self.reserved * 100 / self.limit) if self.limit else 0.0


def budget_lines(*, user, month: dt.date) -> list[BudgetLine]:
    if not can(user, "budget.view"):
        return []
    periods = {p.budget_id: p for p in BudgetPeriod.objects.filter(period_start=month)}
    lines = []
    for budget in Budget.objects.select_related("team", "agent").order_by("scope", "team__name", "agent__name"):
        period = periods.get(budget.pk)
        lines.append(BudgetLine(budget, period.spent_micros if period else 0, period.reserved_micros if period else 0))
    return lines


def covering_lines(*, agent, month: dt.date) -> list[BudgetLine]:
    """This month's figures of the active budgets covering one agent (an approver judges on them)."""
    from django.db.models import Q

    budgets = Budget.objects.filter(
        Q(scope="organisation") | Q(scope="team", team_id=agent.team_id) | Q(scope="agent", agent_id=agent.pk),
        active=True,
    ).select_related("team", "agent").order_by("scope")
    periods = {p.budget_id: p for p in BudgetPeriod.objects.filter(period_start=month, budget__in=budgets)}
    return [BudgetLine(b, periods[b.pk].spent_micros if b.pk in periods else 0,
                       periods[b.pk].reserved_micros if b.pk in periods else 0) for b in budgets]


def agent_spend(*, agent_id, month: dt.date) -> int:
    return LedgerEntry.objects.filter(agent_id=agent_id, period_start=month).aggregate(s=Sum("cost_micros"))["s"] or 0


def ledger(*, user, month: dt.date):
    if not can(user, "budget.view"):
        return LedgerEntry.objects.none()
    return LedgerEntry.objects.filter(period_start=month)


def spend(*, user, month: dt.date, group_by: str) -> list[dict]:
    """Spend of a month grouped by agent, team, model (or tool) or day, largest first (days in order)."""
    entries = ledger(user=user, month=month)
    if group_by == "day":
        tz = zoneinfo.ZoneInfo(settings.WARDEN_TIMEZONE)
        entries = entries.annotate(day=TruncDate("occurred_at", tzinfo=tz))
    rows = (
        entries.values(key=F(GROUPS[group_by]))
        .annotate(cost_micros=Sum("cost_micros"), actions=Count("id"), input_tokens=Sum("input_tokens"),
                  output_tokens=Sum("output_tokens"), overage_micros=Sum("overage_micros"))
        .order_by("key" if group_by == "day" else "-cost_micros")
    )
    return [{**row, "key": row["key"].isoformat() if group_by == "day" else row["key"]} for row in rows]


def forecast(*, total: int, month: dt.date, daily: list[dict], now: dt.datetime | None = None) -> int:
    """Month-end spend at the current burn rate (the last 7 days' average, or the month's so far)."""
    now = (now or timezone.now()).astimezone(zoneinfo.ZoneInfo(settings.WARDEN_TIMEZONE))
    days_in_month = calendar.monthrange(month.year, month.month)[1]
    if (now.year, now.month) != (month.year, month.month):
        return total if now.date() > month else 0
    elapsed = now.day
    recent = [row for row in daily if dt.date.fromisoformat(row["key"]) > now.date() - dt.timedelta(days=7)]
    window = min(7, elapsed)
    rate = sum(row["cost_micros"] for row in recent) / window if window else 0
    return int(total + rate * (days_in_month - elapsed))


def summary(*, user, month: dt.date) -> dict:
    daily = spend(user=user, month=month, group_by="day")
    total = sum(row["cost_micros"] for row in daily)
    return {
        "month": month.strftime("%Y-%m"),
        "total_micros": total,
        "forecast_micros": forecast(total=total, month=month, daily=daily),
        "daily": daily,
    }


def current_prices() -> list[Price]:
    now = timezone.now()
    return list(
        Price.objects.filter(effective_from__lte=now).order_by("kind", "name", "-effective_from").distinct("kind", "name")
    )


def notifications(*, user, limit: int = 20):
    if not can(user, "budget.view"):
        return Notification.objects.none()
    return Notification.objects.select_related("budget__team", "budget__agent", "agent")[:limit]
