"""The money side of the gate, and finance's writes: prices and budgets.

The gate calls, inside its transaction: `estimate_cost`, `reserve`, and at
completion `actual_cost` and `settle`. Amounts are integer micro-dollars.

Reservation holds under any concurrency: the covering budget periods of the
month are locked (SELECT ... FOR UPDATE, always in id order, so two callers
never deadlock), checked against their limits with the newest committed
values, and reserved all together or not at all.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from .models import Budget, BudgetPeriod, BudgetScope, LedgerEntry, OnExceed, Price, PriceKind

MAX_MICROS = 10**12  # one million dollars: anything above is a mistake
DEFAULT_THRESHOLDS = [50, 80, 100]


@dataclass(frozen=True)
class Estimate:
    micros: int
    problem: str | None = None  # set when the action cannot be priced: the gate denies


@dataclass(frozen=True)
class Reservation:
    outcome: str  # allowed | denied | pending_approval
    micros: int = 0
    reasons: list[str] = field(default_factory=list)
    escalate_to: list[str] = field(default_factory=list)


def money(value, name: str, *, maximum: int = MAX_MICROS) -> int:
    """A whole number of micro-dollars, or a ValidationError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError({name: "Must be a whole number of micro-dollars (no floats, no strings)."})
    if not 0 <= value <= maximum:
        raise ValidationError({name: f"Must be between 0 and {maximum} micro-dollars."})
    return value


def dollars(micros: int) -> str:
    """Exact: $1,234.50, $0.00075 (never rounded away; amounts are whole micro-dollars)."""
    whole, fraction = divmod(int(micros), 1_000_000)
    digits = f"{fraction:06d}".rstrip("0")
    return f"${whole:,}.{digits.ljust(2, '0')}"


def period_start(at: dt.datetime | None = None) -> dt.date:
    """The first day of the calendar month of `at` in WARDEN_TIMEZONE."""
    local = (at or timezone.now()).astimezone(zoneinfo.ZoneInfo(settings.WARDEN_TIMEZONE))
    return local.date().replace(day=1)


def _per_million(tokens: int, price: int) -> int:
    return (tokens * price + 999_999) // 1_000_000  # round up: never under-reserve


# --- prices ------------------------------------------------------------------------


PRICE_SQL = """
SELECT input_per_million_micros, output_per_million_micros, per_call_micros FROM billing_price
WHERE kind = %s AND name = %s AND effective_from <= %s ORDER BY effective_from DESC LIMIT 1
"""


def price_at(kind: str, name: str, at: dt.datetime) -> tuple[int, int, int] | None:
    with connection.cursor() as cursor:
        cursor.execute(PRICE_SQL, [kind, name, at])
        return cursor.fetchone()


@transaction.atomic
def price_set(*, kind: str, name: str, by, input_per_million_micros: int = 0, output_per_million_micros: int = 0,
              per_call_micros: int = 0, effective_from: dt.datetime | None = None, note: str = "") -> Price:
    """A new price from `effective_from` (default now); older prices stay for history."""
    if kind not in PriceKind.values:
        raise ValidationError({"kind": f"One of {', '.join(PriceKind.values)}."})
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError({"name": "A name of at most 100 characters."})
    amounts = {
        "input_per_million_micros": money(input_per_million_micros, "input_per_million_micros", maximum=10**10),
        "output_per_million_micros": money(output_per_million_micros, "output_per_million_micros", maximum=10**10),
        "per_call_micros": money(per_call_micros, "per_call_micros", maximum=10**9),
    }
    if kind == PriceKind.MODEL and not (amounts["input_per_million_micros"] or amounts["output_per_million_micros"]
                                        or amounts["per_call_micros"]):
        note = note or "free model"
    effective_from = effective_from or timezone.now()
    try:
        with transaction.atomic():
            price = Price.objects.create(kind=kind, name=name, effective_from=effective_from, note=note[:200],
                                         created_by=by, **amounts)
    except IntegrityError:
        raise ValidationError({"effective_from": "A price for this name already starts at that instant."}) from None
    audit_record(action="price.set", actor=by, resource=f"price:{kind}:{name}",
                 payload={**amounts, "effective_from": effective_from, "note": note})
    return price


def _price_kind(action: str) -> str | None:
    return {"llm.call": PriceKind.MODEL, "tool.call": PriceKind.TOOL, "external.call": PriceKind.ENDPOINT,
            "tool.http": PriceKind.ENDPOINT}.get(action)


def estimate_cost(*, action: str, resource: str, cleaned: dict, at: dt.datetime | None = None) -> Estimate:
    """What to reserve. A model, tool or paid endpoint without a price is refused, never free."""
    at = at or timezone.now()
    declared = cleaned.get("estimated_cost_micros", 0)
    kind = _price_kind(action)
    if kind is None:
        return Estimate(micros=declared)
    name = cleaned["host"] if kind == PriceKind.ENDPOINT else resource
    price = price_at(kind, name, at)
    if price is None:
        if action == "tool.http":
            return Estimate(micros=declared)  # plain HTTP through a tool costs what the caller declares
        label = {"model": "model", "tool": "tool", "endpoint": "external endpoint"}[kind]
        return Estimate(micros=0, problem=f"{label} {name} has no price; finance must price it before it can be used")
    input_price, output_price, per_call = price
    micros = per_call
    if action == "llm.call":
        micros += _per_million(cleaned["input_tokens"], input_price) + _per_million(cleaned["max_output_tokens"], output_price)
    return Estimate(micros=max(micros, declared))


# --- reservation and settlement -------------------------------------------------------

def covering(team_id: str, agent_id: str) -> str:
    """SQL: budget `b` covers the agent (the one rule, used here and by the gate's identity query)."""
    return f"(b.scope = 'organisation' OR (b.scope = 'team' AND b.team_id = {team_id}) OR (b.scope = 'agent' AND b.agent_id = {agent_id}))"


COVERING = covering("%s", "%s")
OPEN_PERIODS_SQL = f"""
INSERT INTO billing_budgetperiod (budget_id, period_start, spent_micros, reserved_micros)
SELECT b.id, %s, 0, 0 FROM billing_budget b WHERE b.active AND {COVERING}
ON CONFLICT (budget_id, period_start) DO NOTHING
"""
LOCK_PERIODS_SQL = f"""
SELECT p.id, p.spent_micros, p.reserved_micros, b.monthly_limit_micros, b.on_exceed, b.id, b.scope
FROM billing_budgetperiod p JOIN billing_budget b ON b.id = p.budget_id
WHERE p.period_start = %s AND b.active AND {COVERING}
ORDER BY p.id FOR UPDATE OF p
"""
RESERVE_SQL = """
WITH reserved AS (
    UPDATE billing_budgetperiod SET reserved_micros = reserved_micros + %s WHERE id = ANY(%s)
)
INSERT INTO billing_reservationline (action_id, period_id, micros)
SELECT %s, period_id, %s FROM unnest(%s::bigint[]) AS period_id
"""


def _lock_covering(*, agent_id, team_id, month: dt.date, covering: int | None = None) -> list[tuple]:
    """Lock this month's periods of the covering budgets, opening the missing ones first.

    `covering` (how many active budgets cover the agent, if the caller knows)
    saves the round trips: none when 0, and no opening when all are open.
    """
    if covering == 0:
        return []
    with connection.cursor() as cursor:
        if covering is not None:
            cursor.execute(LOCK_PERIODS_SQL, [month, team_id, agent_id])
            rows = cursor.fetchall()
            if len(rows) >= covering:
                return rows
        cursor.execute(OPEN_PERIODS_SQL, [month, team_id, agent_id])
        cursor.execute(LOCK_PERIODS_SQL, [month, team_id, agent_id])
        return cursor.fetchall()


def _budget_label(scope: str, budget_id: int) -> str:
    budget = Budget.objects.select_related("team", "agent").get(pk=budget_id)
    return budget.label


def reserve(*, agent, action_id, micros: int, at: dt.datetime | None = None, covering: int | None = None) -> Reservation:
    """Reserve `micros` at every budget covering the agent this month, or at none."""
    rows = _lock_covering(agent_id=agent.pk, team_id=agent.team_id, month=period_start(at), covering=covering)
    if not rows:
        return Reservation(outcome="allowed", micros=micros)
    over = [row for row in rows if micros and row[1] + row[2] + micros > row[3]]
    if over:
        reasons, escalate = [], False
        for _, spent, reserved, limit, on_exceed, budget_id, scope in over:
            reasons.append(
                f"budget {_budget_label(scope, budget_id)} would be exceeded: spent {dollars(spent)} + reserved "
                f"{dollars(reserved)} + this {dollars(micros)} > monthly limit {dollars(limit)}"
            )
            escalate = escalate or on_exceed == OnExceed.ESCALATE
        all_escalate = all(row[4] == OnExceed.ESCALATE for row in over)
        if all_escalate and escalate:
            return Reservation(outcome="pending_approval", reasons=reasons, escalate_to=["finance"])
        return Reservation(outcome="denied", reasons=reasons)
    if micros:
        period_ids = [row[0] for row in rows]
        with connection.cursor() as cursor:
            cursor.execute(RESERVE_SQL, [micros, period_ids, action_id, micros, period_ids])
    return Reservation(outcome="allowed", micros=micros)


def actual_cost(*, action, status: str, usage: dict | None, cost_micros: int | None) -> int:
    """The actual cost of a completed action from its usage report (failures cost nothing)."""
    tokens = (0, 0)
    if usage is not None:
        if not isinstance(usage, dict):
            raise ValidationError({"usage": "Must be an object {model, input_tokens, output_tokens}."})
        if action.action == "llm.call":
            if usage.get("model") != action.resource:
                raise ValidationError({"usage.model": f"This action reserved model {action.resource}, not {usage.get('model')!r}."})
            tokens = (money(usage.get("input_tokens"), "usage.input_tokens", maximum=10**9),
                      money(usage.get("output_tokens"), "usage.output_tokens", maximum=10**9))
    if cost_micros is not None:
        cost_micros = money(cost_micros, "cost_micros")
    if status == "failed":
        return 0
    if cost_micros is not None:
        return cost_micros
    if action.action == "llm.call" and usage is not None:
        price = price_at(PriceKind.MODEL, action.resource, action.created_at)
        if price is None:  # priced when reserved, so this only happens if history was rewritten
            return action.estimated_cost_micros
        return price[2] + _per_million(tokens[0], price[0]) + _per_million(tokens[1], price[1])
    return action.estimated_cost_micros


def _release_lines(action_id, *, spend: int) -> list[int]:
    """Release this action's reservation lines, adding `spend` to each period; the period ids."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT period_id FROM billing_reservationline WHERE action_id = %s AND settled_at IS NULL ORDER BY period_id",
            [action_id],
        )
        period_ids = [row[0] for row in cursor.fetchall()]
        if not period_ids:
            return []
        cursor.execute("SELECT id FROM billing_budgetperiod WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [period_ids])
        cursor.execute(
            """
            UPDATE billing_budgetperiod p SET reserved_micros = p.reserved_micros - l.micros,
                   spent_micros = p.spent_micros + %s
            FROM billing_reservationline l
            WHERE l.action_id = %s AND l.settled_at IS NULL AND l.period_id = p.id
            """,
            [spend, action_id],
        )
        cursor.execute("UPDATE billing_reservationline SET settled_at = %s WHERE action_id = %s AND settled_at IS NULL",
                       [timezone.now(), action_id])
    return period_ids


def settle(*, action, actual_micros: int) -> dict:
    """Settle the reservation to the actual cost, write the ledger entry, raise alerts."""
    from . import alerts

    now = timezone.now()
    period_ids = _release_lines(action.pk, spend=actual_micros)
    if not period_ids and actual_micros:
        # Nothing was reserved (no budget covered the agent then): count the spend now.
        rows = _lock_covering(agent_id=action.agent_id, team_id=action.agent.team_id, month=period_start(now))
        period_ids = [row[0] for row in rows]
        BudgetPeriod.objects.filter(pk__in=period_ids).update(spent_micros=F("spent_micros") + actual_micros)
    overage = max(0, actual_micros - action.reserved_micros) if action.reserved_micros or period_ids else 0
    usage = (action.usage or {}).get("usage") or {}
    LedgerEntry.objects.create(
        action=action, agent_id=action.agent_id, agent_name=action.agent.name, team=action.agent.team.name,
        kind=action.action, resource=action.resource,
        input_tokens=usage.get("input_tokens", 0) if isinstance(usage, dict) else 0,
        output_tokens=usage.get("output_tokens", 0) if isinstance(usage, dict) else 0,
        cost_micros=actual_micros, reserved_micros=action.reserved_micros, overage_micros=overage,
        status=action.status, period_start=period_start(action.created_at), occurred_at=now,
    )
    alerts.check_thresholds(period_ids=period_ids)
    alerts.check_spike(agent=action.agent, at=now)
    return {"settled_micros": actual_micros, "released_micros": max(0, action.reserved_micros - actual_micros),
            "overage_micros": overage}


@transaction.atomic
def reservations_sweep(*, older_than: dt.timedelta | None = None, limit: int = 500) -> int:
    """Release reservations of allowed actions never completed; each expiry is audited."""
    from governance.models import Action, ActionStatus

    older_than = older_than or dt.timedelta(seconds=settings.WARDEN_RESERVATION_TIMEOUT)
    cutoff = timezone.now() - older_than
    stale = list(
        Action.objects.filter(outcome="allowed", status=ActionStatus.DECIDED, created_at__lt=cutoff)
        .select_related("agent__team").order_by("created_at")[:limit]
    )
    expired = 0
    for action in stale:
        # Claim it: if a completion or another sweeper got there first, leave it.
        if Action.objects.filter(pk=action.pk, status=ActionStatus.DECIDED).update(status=ActionStatus.EXPIRED) != 1:
            continue
        _release_lines(action.pk, spend=0)
        expired += 1
        audit_record(
            action="budget.reservation.expire", actor=None, agent=action.agent, resource=f"action:{action.pk}",
            outcome="expired", cost_micros=0,
            reasons=[f"not completed within {int(older_than.total_seconds())} s; {dollars(action.reserved_micros)} released"],
            payload={"action_id": str(action.pk), "released_micros": action.reserved_micros},
        )
    return expired


# --- budgets -----------------------------------------------------------------------


def _clean_thresholds(thresholds) -> list[int]:
    thresholds = list(thresholds if thresholds is not None else DEFAULT_THRESHOLDS)
    if not thresholds:
        return []
    if any(isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 100 for t in thresholds):
        raise ValidationError({"thresholds": "Whole percentages between 1 and 100."})
    if thresholds != sorted(set(thresholds)):
        raise ValidationError({"thresholds": "Thresholds must be in increasing order, each once."})
    return thresholds


@transaction.atomic
def budget_create(*, scope: str, monthly_limit_micros: int, by, team=None, agent=None, thresholds=None,
                  on_exceed: str = OnExceed.DENY) -> Budget:
    from agents.models import AgentStatus

    if scope not in BudgetScope.values:
        raise ValidationError({"scope": f"One of {', '.join(BudgetScope.values)}."})
    if (scope == BudgetScope.TEAM) != (team is not None) or (scope == BudgetScope.AGENT) != (agent is not None):
        raise ValidationError({"scope": "A team budget names a team, an agent budget an agent, the organisation's neither."})
    if agent is not None:
        agent = type(agent).objects.get(pk=agent.pk)  # the current status, not the caller's copy
    if agent is not None and agent.status == AgentStatus.RETIRED:
        raise ValidationError({"agent": "A retired agent cannot get a budget."})
    if on_exceed not in OnExceed.values:
        raise ValidationError({"on_exceed": "Either deny or escalate."})
    limit = money(monthly_limit_micros, "monthly_limit_micros")
    thresholds = _clean_thresholds(thresholds)
    try:
        with transaction.atomic():
            budget = Budget.objects.create(scope=scope, team=team, agent=agent, monthly_limit_micros=limit,
                                           thresholds=thresholds, on_exceed=on_exceed, created_by=by)
    except IntegrityError:
        raise ValidationError({"scope": "That organisation, team or agent already has a budget; change it instead."}) from None
    audit_record(action="budget.create", actor=by, agent=agent, resource=f"budget:{budget.pk}",
                 payload={"scope": scope, "target": budget.label, "monthly_limit_micros": limit,
                          "thresholds": thresholds, "on_exceed": on_exceed})
    return budget


@transaction.atomic
def budget_update(*, budget: Budget, by, monthly_limit_micros: int | None = None, thresholds=None,
                  on_exceed: str | None = None, active: bool | None = None) -> Budget:
    budget = Budget.objects.select_for_update(of=("self",)).select_related("team", "agent").get(pk=budget.pk)
    changes = {}
    if monthly_limit_micros is not None:
        changes["monthly_limit_micros"] = money(monthly_limit_micros, "monthly_limit_micros")
    if thresholds is not None:
        changes["thresholds"] = _clean_thresholds(thresholds)
    if on_exceed is not None:
        if on_exceed not in OnExceed.values:
            raise ValidationError({"on_exceed": "Either deny or escalate."})
        changes["on_exceed"] = on_exceed
    if active is not None:
        changes["active"] = bool(active)
    diff = {k: {"from": getattr(budget, k), "to": v} for k, v in changes.items() if getattr(budget, k) != v}
    if diff:
        for key, value in changes.items():
            setattr(budget, key, value)
        budget.save()
        audit_record(action="budget.update", actor=by, agent=budget.agent, resource=f"budget:{budget.pk}",
                     payload={"target": budget.label, **diff})
    return budget

