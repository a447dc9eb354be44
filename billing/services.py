"""The money side of the gate, and finance's writes: prices and budgets.

The gate calls, inside its transaction: `estimate_cost`, `reserve`, and at
completion `actual_cost` and `settle`; `release` when it closes actions that
never completed. Amounts are integer micro-dollars, and they come from
Warden's prices: an agent's own figures may raise what is held for it, never
lower it, and never set what it is charged.

Reservation holds under any concurrency: the covering budget periods of the
month are locked (SELECT ... FOR UPDATE, always in id order, so two callers
never deadlock), checked against their limits with the newest committed
values, and reserved all together or not at all.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, field
from urllib.parse import urlsplit

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
    micros: int  # what is reserved and what policies see: Warden's estimate, raised by the caller's if higher
    problem: str | None = None  # set when the action cannot be priced: the gate denies
    warden_micros: int = 0  # Warden's own estimate from its prices


@dataclass(frozen=True)
class Reservation:
    outcome: str  # allowed | denied | pending_approval
    micros: int = 0
    reasons: list[str] = field(default_factory=list)
    escalate_to: list[str] = field(default_factory=list)
    approvals: int = 1  # when escalated: distinct approvers the budgets ask for (the most of them)
    expires_hours: int | None = None  # when escalated: how long the request may wait (the shortest of them)
    over_budget_ids: list[int] = field(default_factory=list)  # when escalated: the budgets it would exceed


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


DEFAULT_ENDPOINT = "*"  # the price of every host without one of its own


def _price_of(action: str, name: str, at: dt.datetime) -> tuple[int, int, int] | None:
    """(input per million, output per million, per call) Warden charges for this action's resource."""
    kind = _price_kind(action)
    price = price_at(kind, name, at)
    if price is None and kind == PriceKind.ENDPOINT:
        price = price_at(kind, DEFAULT_ENDPOINT, at)
    return price


HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def endpoint_host(resource: str) -> str:
    """The host a URL or `host[:port][/path]` names, in its one spelling ("" when it names none).

    Lower-case, IDNA-encoded, without a trailing dot; percent-escapes and
    anything that is not a host name or an IP address name none. Prices and
    policies see this spelling, so `API.example.com.` and `api.example.com`
    are one host to both.
    """
    try:
        host = urlsplit(resource if "://" in resource else "//" + resource).hostname or ""
    except ValueError:
        return ""
    host = host.rstrip(".")
    if not host or "%" in host:
        return ""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ""
    if len(host) > 253 or not all(HOST_LABEL.match(label) for label in host.split(".")):
        return ""
    return host


def _priced_name(action: str, resource: str) -> str:
    return endpoint_host(resource) if _price_kind(action) == PriceKind.ENDPOINT else resource


def _charge(price: tuple[int, int, int], *, calls: int, input_tokens: int, output_tokens: int) -> int:
    input_price, output_price, per_call = price
    return per_call * calls + _per_million(input_tokens, input_price) + _per_million(output_tokens, output_price)


UNREAD = object()


def estimate_cost(*, action: str, resource: str, cleaned: dict, at: dt.datetime | None = None,
                  price=UNREAD) -> Estimate:
    """What to reserve: Warden's price for the call, raised (never lowered) by the caller's estimate.

    A model, tool or endpoint without a price (for endpoints, neither the
    host's own nor the `*` default) is refused, never free. Reading a data
    view and delegating have no price: they cost nothing and hold nothing,
    whatever the caller declares (else a free action could hold a shared
    budget hostage until the sweep). `price`: the price row as `_price_of`
    gives it, when the caller has read it already.
    """
    at = at or timezone.now()
    declared = cleaned.get("estimated_cost_micros", 0)
    kind = _price_kind(action)
    if kind is None:
        return Estimate(micros=0)
    name = _priced_name(action, resource)
    if price is UNREAD:  # else the caller read it (governance/hotpath.py: `price_sql`)
        price = _price_of(action, name, at)
    if price is None:
        label = {"model": "model", "tool": "tool", "endpoint": "external endpoint"}[kind]
        return Estimate(micros=0, problem=f"{label} {name} has no price; finance must price it before it can be used")
    tokens = (cleaned["input_tokens"], cleaned["max_output_tokens"]) if action == "llm.call" else (0, 0)
    micros = _charge(price, calls=1, input_tokens=tokens[0], output_tokens=tokens[1])
    return Estimate(micros=max(micros, declared), warden_micros=micros)


@dataclass(frozen=True)
class Charge:
    """What a completion costs, and the counts it was priced on."""

    micros: int
    input_tokens: int = 0
    output_tokens: int = 0


def actual_cost(*, action, status: str, usage: dict | None, trusted: bool = False) -> Charge:
    """What a completed action costs: Warden's price (as of the decision) applied to the usage.

    Calls: the reported `calls`, at least 1 for a success (0 for a failure
    that reports none). Tokens: as reported; a successful model call that
    reports none is charged the tokens it reserved. Reading data and
    delegating have no price and cost nothing, whatever anyone declares.
    An agent's report (not `trusted`) may not claim more output than it
    reserved; a provider's answer (`trusted`) is what was spent, and is
    charged in full.
    """
    usage = usage or {}
    reported = Charge(0, usage.get("input_tokens", 0), usage.get("output_tokens", 0))
    if _price_kind(action.action) is None:
        return reported
    succeeded = status == "succeeded"
    price = _price_of(action.action, _priced_name(action.action, action.resource), action.created_at)
    if price is None:  # priced when reserved, so this only happens if history was rewritten
        return Charge(action.reserved_micros, reported.input_tokens, reported.output_tokens)
    calls = usage.get("calls", 1 if succeeded else 0)
    if succeeded:
        calls = max(calls, 1)
    input_tokens, output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
    if action.action == "llm.call":
        reserved_output = action.context.get("max_output_tokens", 0)
        if not trusted and output_tokens is not None and output_tokens > reserved_output:
            raise ValidationError({"usage.output_tokens": f"More than the {reserved_output} output tokens this "
                                                          "action asked for (max_output_tokens)."})
        if succeeded and input_tokens is None and output_tokens is None:
            input_tokens, output_tokens = action.context.get("input_tokens", 0), reserved_output
    input_tokens, output_tokens = input_tokens or 0, output_tokens or 0
    micros = _charge(price, calls=calls, input_tokens=input_tokens, output_tokens=output_tokens)
    if micros > MAX_MICROS:
        raise ValidationError({"usage": f"This usage would cost {dollars(micros)}, more than any one action may "
                                        f"({dollars(MAX_MICROS)}); it is not recorded."})
    return Charge(micros, input_tokens, output_tokens)


# --- reservation and settlement -------------------------------------------------------

def covering(team_id: str, agent_id: str) -> str:
    """SQL: budget `b` covers the agent (the one rule, used here and by the gate's identity query)."""
    return f"(b.scope = 'organisation' OR (b.scope = 'team' AND b.team_id = {team_id}) OR (b.scope = 'agent' AND b.agent_id = {agent_id}))"


COVERING = covering("%s", "%s")
# Lock order, everywhere budget periods are locked: by budget, then month. The periods a month opens are
# inserted in that order too, and never while this transaction holds a period lock: a transaction
# that has locked periods and then waits on another's uncommitted period insert is a deadlock.
OPEN_PERIODS_SQL = f"""
INSERT INTO billing_budgetperiod (budget_id, period_start, spent_micros, reserved_micros)
SELECT b.id, %s, 0, 0 FROM billing_budget b WHERE b.active AND {COVERING} ORDER BY b.id
ON CONFLICT (budget_id, period_start) DO NOTHING
"""
LOCK_PERIODS_SQL = f"""
SELECT p.id, p.spent_micros, p.reserved_micros, b.monthly_limit_micros, b.on_exceed, b.id, b.scope
FROM billing_budgetperiod p JOIN billing_budget b ON b.id = p.budget_id
WHERE p.period_start = %s AND b.active AND {COVERING}
ORDER BY p.budget_id FOR UPDATE OF p
"""
RESERVE_SQL = """
WITH reserved AS (
    UPDATE billing_budgetperiod SET reserved_micros = reserved_micros + %s WHERE id = ANY(%s)
)
INSERT INTO billing_reservationline (action_id, period_id, micros)
SELECT %s, period_id, %s FROM unnest(%s::bigint[]) AS period_id
"""


def open_periods(team_id: str, agent_id: str, month: str) -> str:
    """SQL: how many of this month's periods of the budgets covering the agent exist (for the gate's snapshot)."""
    return (f"(SELECT count(*) FROM billing_budgetperiod p JOIN billing_budget b ON b.id = p.budget_id "
            f"WHERE p.period_start = {month} AND b.active AND {covering(team_id, agent_id)})")


def _lock_covering(*, agent_id, team_id, month: dt.date, covering: int | None = None,
                   open_: int | None = None) -> list[tuple]:
    """Lock this month's periods of the covering budgets, opening the missing ones first.

    `covering` and `open_` (how many active budgets cover the agent, and how
    many of their periods this month exist, if the caller knows) save round
    trips: none when nothing covers it, no opening when all are open.
    """
    if covering == 0:
        return []
    with connection.cursor() as cursor:
        if covering is None or open_ is None or open_ < covering:
            cursor.execute(OPEN_PERIODS_SQL, [month, team_id, agent_id])
        cursor.execute(LOCK_PERIODS_SQL, [month, team_id, agent_id])
        return cursor.fetchall()


def _budget_label(scope: str, budget_id: int) -> str:
    budget = Budget.objects.select_related("team", "agent").get(pk=budget_id)
    return budget.label


def reserve(*, agent, action_id, micros: int, at: dt.datetime | None = None, covering: int | None = None,
            open_: int | None = None, waive=()) -> Reservation:
    """Reserve `micros` at every budget covering the agent this month, or at none.

    `waive`: budgets (that escalate when exceeded) whose limit finance has approved this very action to go
    past, by deciding the request made for exactly those budgets; any other budget still counts.
    """
    rows = _lock_covering(agent_id=agent.pk, team_id=agent.team_id, month=period_start(at), covering=covering,
                          open_=open_)
    if not rows:
        return Reservation(outcome="allowed", micros=micros)
    waive = set(waive)
    over = [row for row in rows if micros and row[1] + row[2] + micros > row[3]
            and not (row[5] in waive and row[4] == OnExceed.ESCALATE)]
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
            terms = list(Budget.objects.filter(pk__in=[row[5] for row in over]).values_list(
                "approvals_required", "approval_ttl_hours"))
            return Reservation(outcome="pending_approval", reasons=reasons, escalate_to=["finance"],
                               approvals=max(approvals for approvals, _ in terms),
                               expires_hours=min((hours for _, hours in terms if hours), default=None),
                               over_budget_ids=sorted(row[5] for row in over))
        return Reservation(outcome="denied", reasons=reasons)
    if micros:
        period_ids = [row[0] for row in rows]
        with connection.cursor() as cursor:
            cursor.execute(RESERVE_SQL, [micros, period_ids, action_id, micros, period_ids])
    return Reservation(outcome="allowed", micros=micros)


def _release_lines(action_ids: list, *, spend: int = 0) -> list[int]:
    """Release these actions' reservation lines (their periods locked in id order); the period ids.

    `spend` (one action only) is added to each of its periods as it is released.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT id FROM billing_budgetperiod WHERE id IN (
                SELECT period_id FROM billing_reservationline WHERE action_id = ANY(%s) AND settled_at IS NULL
            ) ORDER BY budget_id, period_start FOR UPDATE
            """,
            [action_ids],
        )
        period_ids = [row[0] for row in cursor.fetchall()]
        if not period_ids:
            return []
        cursor.execute(
            """
            UPDATE billing_budgetperiod p SET reserved_micros = p.reserved_micros - l.micros,
                   spent_micros = p.spent_micros + %s * l.lines
            FROM (SELECT period_id, sum(micros) AS micros, count(*) AS lines FROM billing_reservationline
                  WHERE action_id = ANY(%s) AND settled_at IS NULL GROUP BY period_id) l
            WHERE l.period_id = p.id
            """,
            [spend, action_ids],
        )
        cursor.execute("UPDATE billing_reservationline SET settled_at = %s WHERE action_id = ANY(%s) AND settled_at IS NULL",
                       [timezone.now(), action_ids])
    return period_ids


def release(*, action_ids: list) -> list[int]:
    """Give back what these actions hold, spending nothing (they were closed without completing)."""
    return _release_lines(list(action_ids))


def settle(*, action, charge: Charge, usage_source: str, unreserved: bool = False) -> dict:
    """Settle the reservation to the actual cost, write the ledger entry, raise alerts.

    With nothing left reserved (no budget covered the agent then, or the
    reservation was released before the completion came: `unreserved`), the
    spend is counted at the budgets covering the agent in the action's month.
    """
    from . import alerts

    now = timezone.now()
    month = period_start(action.created_at)
    actual_micros = charge.micros
    period_ids = _release_lines([action.pk], spend=actual_micros)
    if not period_ids and actual_micros:
        rows = _lock_covering(agent_id=action.agent_id, team_id=action.agent.team_id, month=month)
        period_ids = [row[0] for row in rows]
        BudgetPeriod.objects.filter(pk__in=period_ids).update(spent_micros=F("spent_micros") + actual_micros)
    held = 0 if unreserved else action.reserved_micros
    overage = max(0, actual_micros - held) if held or period_ids else 0
    LedgerEntry.objects.create(
        action=action, agent_id=action.agent_id, agent_name=action.agent.name, team=action.agent.team.name,
        kind=action.action, resource=action.resource,
        input_tokens=charge.input_tokens, output_tokens=charge.output_tokens,
        cost_micros=actual_micros, reserved_micros=held, overage_micros=overage, status=action.status,
        usage_source=usage_source, unreserved=unreserved, period_start=month, occurred_at=now,
    )
    alerts.check_thresholds(period_ids=period_ids)
    alerts.check_spike(agent=action.agent, at=now)
    return {"settled_micros": actual_micros, "released_micros": max(0, held - actual_micros),
            "overage_micros": overage, "unreserved": unreserved}


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


def _clean_approval_terms(approvals_required, approval_ttl_hours) -> dict:
    changes = {}
    if approvals_required is not None:
        if approvals_required not in (1, 2) or isinstance(approvals_required, bool):
            raise ValidationError({"approvals_required": "1 or 2 distinct approvers."})
        changes["approvals_required"] = approvals_required
    if approval_ttl_hours is not None:
        if isinstance(approval_ttl_hours, bool) or not isinstance(approval_ttl_hours, int) or not 1 <= approval_ttl_hours <= 720:
            raise ValidationError({"approval_ttl_hours": "Between 1 and 720 hours (30 days)."})
        changes["approval_ttl_hours"] = approval_ttl_hours
    return changes


@transaction.atomic
def budget_update(*, budget: Budget, by, monthly_limit_micros: int | None = None, thresholds=None,
                  on_exceed: str | None = None, active: bool | None = None, approvals_required: int | None = None,
                  approval_ttl_hours: int | None = None) -> Budget:
    budget = Budget.objects.select_for_update(of=("self",), no_key=True).select_related("team", "agent").get(pk=budget.pk)
    changes = _clean_approval_terms(approvals_required, approval_ttl_hours)
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

