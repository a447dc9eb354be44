"""Reads of the governance domain."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.utils import timezone

from .access import ADMIN, can, user_groups
from .models import Approval, DataView, Policy, PolicySetVersion, PolicyVersion, RoleGrant
from .policy_engine import CompiledPolicySet, PolicyRow, compiled


# --- which role grants are live: the one rule ----------------------------------------------


@dataclass(frozen=True)
class LiveRoles:
    names: frozenset[str]
    scopes: frozenset[str]
    expired: tuple[str, ...]  # unrevoked grants past their expiry (for a denial's reason)


def grant_live(expires_at, *, at: dt.datetime) -> bool:
    """The rule, for one unrevoked grant: it counts until its expiry (none: for ever)."""
    if isinstance(expires_at, str):  # as the gate's one-query snapshot hands it back
        expires_at = dt.datetime.fromisoformat(expires_at)
    return expires_at is None or expires_at > at


def live_roles(grants, *, at: dt.datetime) -> LiveRoles:
    """Which of an agent's unrevoked grants count at `at`, by `grant_live`.

    `grants` are (role name, role scopes, expires_at) rows. `live_grant_filter`
    is the same rule for querysets.
    """
    names, scopes, expired = set(), set(), []
    for role, role_scopes, expires_at in grants:
        if not grant_live(expires_at, at=at):
            expired.append(role)
            continue
        names.add(role)
        scopes.update(role_scopes)
    return LiveRoles(frozenset(names), frozenset(scopes), tuple(sorted(expired)))


# An agent key can be used now: unrevoked, unexpired (the database's clock, like the rest of a decision).
KEY_LIVE = "(k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()))"


def usable_now(agent_id, key_id) -> tuple[bool, bool]:
    """(the agent is active, its key, if any, is usable) as of now: a fresh read, not a snapshot's."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"""
            SELECT a.status = 'active', %s::uuid IS NULL OR coalesce((SELECT {KEY_LIVE} AND k.agent_id = a.id
                                                                  FROM agents_agentkey k WHERE k.id = %s), false)
            FROM agents_agent a WHERE a.id = %s
        """, [key_id, key_id, agent_id])
        return cursor.fetchone()


def live_grant_filter(at: dt.datetime) -> Q:
    """`live_roles`' rule as a filter on RoleGrant: unrevoked and unexpired at `at`."""
    return Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=at))


def agent_roles(agent_id, *, at: dt.datetime | None = None) -> LiveRoles:
    rows = RoleGrant.objects.filter(agent_id=agent_id, revoked_at__isnull=True).values_list(
        "role__name", "role__scopes", "expires_at")
    return live_roles(rows, at=at or timezone.now())


def current_policy_set() -> tuple[int, str]:
    """(number, publish time) of the newest set; the time tells a restored database apart."""
    row = PolicySetVersion.objects.order_by("-number").values_list("number", "created_at").first()
    return (row[0], row[1].isoformat()) if row else (0, "")


def policy_set_rows(number: int) -> list[PolicyRow]:
    if number == 0:
        return []
    members = PolicySetVersion.objects.values_list("members", flat=True).get(number=number)
    wanted = {(name, version) for name, version in members}
    versions = PolicyVersion.objects.filter(
        policy__name__in=[name for name, _ in members]
    ).values_list("policy__name", "number", "body")
    found = {(name, number): body for name, number, body in versions if (name, number) in wanted}
    return [PolicyRow(name, version, found[(name, version)]) for name, version in sorted(wanted)]


def policy_set_for(number: int, published: str) -> CompiledPolicySet:
    """The compiled set of a version the caller has just read (number, publish time)."""
    return compiled(number, published, lambda: policy_set_rows(number))


def active_policy_set() -> CompiledPolicySet:
    """The newest published set, compiled once per process and version.

    Reading the number is one indexed query per decision, so a publish
    reaches every web and worker process on its very next decision.
    """
    return policy_set_for(*current_policy_set())


def policy_list() -> QuerySet[Policy]:
    return Policy.objects.select_related("current", "owner")


# --- approvals: each group its own queue ------------------------------------------------------------


def approval_list(*, user) -> QuerySet[Approval]:
    """Approvals routed to one of the user's groups; admins see every group's."""
    if not can(user, "approval.view"):
        return Approval.objects.none()
    approvals = Approval.objects.select_related(
        "action__agent__team", "action__agent__owner", "budget__team", "budget__agent", "requested_by",
        "requested_by_agent", "decided_by")
    if user.is_superuser or ADMIN in user_groups(user):
        return approvals
    return approvals.filter(groups__overlap=list(user_groups(user)))


def approval_get(*, user, approval_id) -> Approval:
    """The request, or 404 (also for ids that are not UUIDs, or requests for another group)."""
    from django.http import Http404

    try:
        return approval_list(user=user).get(pk=approval_id)
    except (Approval.DoesNotExist, ValueError, TypeError, ValidationError):
        raise Http404("No such approval request.") from None


def approval_pending_count(*, user) -> int:
    """What waits for the user's own groups (admins: for admin), for the badge in the navigation."""
    if not can(user, "approval.view"):
        return 0
    groups = set(user_groups(user)) | ({"admin", "finance", "security"} if user.is_superuser else set())
    return Approval.objects.filter(status="pending", groups__overlap=list(groups)).count()


@dataclass
class ApprovalContext:
    """All a person needs to judge a request."""

    approval: Approval
    agent: object | None
    budgets: list  # billing.selectors.BudgetLine of the budgets it would use
    data_view: DataView | None
    spend_this_month: int
    denials_this_week: int
    decisions: list
    recent_actions: list  # the agent's last few requests, newest first


def approval_context(*, approval: Approval, now: dt.datetime | None = None) -> ApprovalContext:
    from billing.selectors import agent_spend, covering_lines
    from billing.services import period_start

    from .models import Action

    now = now or timezone.now()
    action = approval.action if approval.action_id else None
    agent = action.agent if action else (approval.requested_by_agent or (approval.budget.agent if approval.budget_id else None))
    month = period_start(now)
    if agent is not None:
        budgets = covering_lines(agent=agent, month=month)
        spend = agent_spend(agent_id=agent.pk, month=month)
        denials = Action.objects.filter(agent=agent, outcome="denied", created_at__gte=now - dt.timedelta(days=7)).count()
        recent = list(Action.objects.filter(agent=agent).exclude(pk=approval.action_id).order_by("-created_at")[:8])
    else:
        budgets, spend, denials, recent = [], 0, 0, []
    if approval.budget_id and not any(line.budget.pk == approval.budget_id for line in budgets):
        from billing.selectors import BudgetLine
        from billing.models import BudgetPeriod

        period = BudgetPeriod.objects.filter(budget_id=approval.budget_id, period_start=month).first()
        budgets = [BudgetLine(approval.budget, period.spent_micros if period else 0,
                              period.reserved_micros if period else 0), *budgets]
    view = DataView.objects.filter(name=action.resource).first() if action and action.action == "data.read" else None
    decisions = list(approval.decisions.select_related("decided_by"))
    return ApprovalContext(approval=approval, agent=agent, budgets=budgets, data_view=view, spend_this_month=spend,
                           denials_this_week=denials, decisions=decisions, recent_actions=recent)


def approval_may_decide(*, user, approval: Approval) -> bool:
    """Only the groups an approval is routed to decide it."""
    groups = set(approval.groups or [approval.group])
    return can(user, "approval.decide") and (user.is_superuser or bool(groups & user_groups(user)))


# --- data views -------------------------------------------------------------------------------------


def data_view_list(*, user) -> QuerySet[DataView]:
    if not can(user, "data_view.view"):
        return DataView.objects.none()
    return DataView.objects.select_related("team", "updated_by")


def data_sink_list(*, user) -> list:
    """Every receiver with a clearance of its own, and the defaults of each kind (governance/flow.py)."""
    from agents.models import Clearance

    from .flow import DEFAULT_SINK
    from .models import DataSink

    if not can(user, "data_view.view"):
        return []
    rows = [{"kind": sink.kind, "name": sink.name, "clearance": sink.get_clearance_display(), "note": sink.note}
            for sink in DataSink.objects.all()]
    listed = {(row["kind"], row["name"]) for row in rows}
    rows += [{"kind": kind, "name": "*", "clearance": Clearance(value).label, "note": "default"}
             for kind, value in DEFAULT_SINK.items() if (kind, "*") not in listed]
    return sorted(rows, key=lambda row: (row["kind"], row["name"] != "*", row["name"]))


def data_view_get(*, user, name) -> DataView:
    from django.http import Http404

    try:
        return data_view_list(user=user).get(name=name)
    except DataView.DoesNotExist:
        raise Http404("No such data view.") from None


def metrics_state(*, now) -> dict:
    """What /metrics reads from PostgreSQL at scrape time (governance/metrics.py): states, not events."""
    import datetime as dt

    from django.db.models import Count, Min

    from agents.models import RUN_ACTIVE, Agent, AgentRun
    from audit.models import AuditEvent, Checkpoint
    from billing.models import BudgetPeriod
    from billing.services import period_start

    from .models import Approval

    pending = Approval.objects.filter(status="pending")
    by_group = dict(pending.values_list("group").annotate(count=Count("id")).order_by())
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    runs = dict(AgentRun.objects.filter(status__in=RUN_ACTIVE).values_list("status").annotate(count=Count("id"))
                .order_by())
    budgets = {}
    for period in (BudgetPeriod.objects.filter(budget__active=True, period_start=period_start(now))
                   .select_related("budget__team", "budget__agent")):
        budget = period.budget
        name = {"team": f"team:{budget.team.name if budget.team else ''}",
                "agent": f"agent:{budget.agent.name if budget.agent else ''}"}.get(budget.scope, budget.scope)
        budgets[name] = (budget.monthly_limit_micros, period.spent_micros, period.reserved_micros)
    checkpoint = Checkpoint.objects.order_by("-created_at").values_list("created_at", flat=True).first()
    events = AuditEvent.objects.all() if checkpoint is None else AuditEvent.objects.filter(occurred_at__gt=checkpoint)
    unchecked = events.order_by("occurred_at").values_list("occurred_at", flat=True).first()
    return {
        "pending_by_group": {group: count for group, count in by_group.items()},
        "oldest_pending_seconds": max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        "runs_by_status": {status: runs.get(status, 0) for status in RUN_ACTIVE},
        "budgets": budgets,
        "unchecked_seconds": max(0.0, (now - unchecked).total_seconds()) if unchecked else 0.0,
        "agents_active": Agent.objects.filter(last_seen_at__gte=now - dt.timedelta(minutes=5)).count(),
    }


def fleet_overview(*, user, now) -> dict:
    """The home page: what the fleet is doing now, as far as this person may see (each part by capability)."""
    import calendar
    import datetime as dt

    from django.db.models import Count, Max, Min, Sum
    from django.db.models.functions import TruncMinute

    from agents.models import RUN_ACTIVE, Agent, AgentRun
    from billing.models import BudgetPeriod, LedgerEntry
    from billing.services import period_start

    from .access import can
    from .models import Action, Alert, Approval

    overview: dict = {"now": now}
    since = now - dt.timedelta(minutes=30)
    overview["agents_active"] = Agent.objects.filter(last_seen_at__gte=now - dt.timedelta(minutes=5)).count()
    overview["agents_total"] = Agent.objects.filter(status="active").count()
    per_minute = (Action.objects.filter(created_at__gte=since).annotate(minute=TruncMinute("created_at"))
                  .values("minute", "outcome").annotate(count=Count("id")))
    minutes = [since.replace(second=0, microsecond=0) + dt.timedelta(minutes=i) for i in range(1, 31)]
    series = {outcome: {minute: 0 for minute in minutes} for outcome in ("allowed", "denied", "pending_approval")}
    for row in per_minute:
        if row["outcome"] in series and row["minute"] in series[row["outcome"]]:
            series[row["outcome"]][row["minute"]] = row["count"]
    overview["decisions"] = {outcome: list(values.values()) for outcome, values in series.items()}
    last = now - dt.timedelta(minutes=5)
    recent = dict(Action.objects.filter(created_at__gte=last).values_list("outcome").annotate(count=Count("id"))
                  .order_by())
    overview["per_minute"] = {outcome: round(recent.get(outcome, 0) / 5, 1)
                              for outcome in ("allowed", "denied", "pending_approval")}
    overview["per_minute_total"] = round(sum(recent.values()) / 5, 1)
    if can(user, "approval.view"):
        overview["approvals"] = approval_list(user=user).filter(status="pending").aggregate(
            count=Count("id"), oldest=Min("created_at"))
    if can(user, "run.view"):
        overview["runs"] = {
            "active": AgentRun.objects.filter(status__in=RUN_ACTIVE).count(),
            "waiting": AgentRun.objects.filter(status="waiting_approval").count(),
            "failed_today": AgentRun.objects.filter(status="failed", finished_at__gte=now - dt.timedelta(hours=24))
            .count()}
    if can(user, "budget.view"):
        month = period_start(now)
        days = calendar.monthrange(month.year, month.month)[1]
        elapsed = max((now.date() - month).days + (now.hour * 3600 + now.minute * 60) / 86400, 1 / 24)
        budgets = []
        for period in (BudgetPeriod.objects.filter(budget__active=True, period_start=month)
                       .select_related("budget__team", "budget__agent").order_by("budget__scope", "budget_id")):
            budget = period.budget
            forecast = int(period.spent_micros * days / elapsed)
            limit = budget.monthly_limit_micros
            budgets.append({"budget": budget, "spent": period.spent_micros, "reserved": period.reserved_micros,
                            "limit": limit, "forecast": forecast,
                            "percent": min(100, period.spent_micros * 100 // limit) if limit else 100,
                            "forecast_percent": min(100, forecast * 100 // limit) if limit else 100,
                            "over": forecast > limit})
        overview["budgets"] = budgets
        overview["top_spenders"] = list(
            LedgerEntry.objects.filter(period_start=month).values("agent_id", "agent_name", "team")
            .annotate(spent=Sum("cost_micros"), last=Max("occurred_at")).order_by("-spent")[:5])
    if can(user, "alert.view"):
        overview["alerts"] = list(Alert.objects.select_related("agent").order_by("-created_at")[:5])
    return overview
