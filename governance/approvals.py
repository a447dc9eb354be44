"""Approvals: a person decides an escalation, exactly once, knowing what they decide.

Requests come from the gate (an action pending approval, from an @escalate
policy or a budget that escalates) and from budget increase requests (an
agent's owner in the browser, or an agent over the API). Each is routed to one
group; only that group decides it, and never a person with a stake in it (the
agent's owner, or a person in its delegation chain; per group, unless
WARDEN_APPROVAL_SELF_APPROVE_GROUPS says otherwise).

Deciding locks the request's row, so of two people who click at once exactly
one decides; when two approvers are required (@approvals("2"), or a budget's
setting), the second distinct approval decides. Approving an action re-runs
its budget step at that moment: the money may be gone, and then the action is
denied with the reason. A request not decided in time expires into a denial.
Every verdict and outcome is an audit event under the action's correlation id.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record

from .access import FINANCE, user_groups
from .context import correlation_scope
from .exceptions import Conflict, NotAllowed
from .models import (Action, ActionOutcome, Approval, ApprovalDecision, ApprovalKind, ApprovalStatus,
                     ApprovalVerdict)
from .payloads import clean_text
from .selectors import approval_may_decide, usable_now as _usable_now

logger = logging.getLogger(__name__)

MAX_COMMENT = 2000
MAX_PURPOSE = 1000


def _expiry(now: dt.datetime, *, seconds: int | None = None) -> dt.datetime:
    return now + dt.timedelta(seconds=seconds or settings.WARDEN_APPROVAL_TTL_HOURS * 3600)


def _purpose(value) -> str:
    """What the asker says it is for: shown to the deciders as the asker's claim."""
    return clean_text(value.strip())[:MAX_PURPOSE] if isinstance(value, str) else ""


def approval_open(*, action: Action, groups, reasons, approvals: int = 1, expires_in: int | None = None,
                  budget_ids=(), now: dt.datetime) -> Approval:
    """The request for an escalated action, made by the gate inside its own transaction.

    Every group an escalating policy names must approve (one distinct person of each), and at least
    `approvals` people in all (@approvals("2"), a budget's setting).
    """
    groups = list(dict.fromkeys(groups))
    approval = Approval.objects.create(
        kind=ApprovalKind.ACTION, action=action, request_digest=action.request_digest, group=groups[0],
        groups=groups, required_approvals=max(min(approvals, 2), len(groups)), budget_ids=list(budget_ids),
        reasons=list(reasons), purpose=_purpose((action.context or {}).get("purpose")), created_at=now,
        expires_at=_expiry(now, seconds=expires_in),
    )
    _announce(approval, "created")
    return approval


def _covers(budget, agent) -> bool:
    from billing.models import BudgetScope

    return (budget.scope == BudgetScope.ORGANISATION or (budget.scope == BudgetScope.TEAM and budget.team_id == agent.team_id)
            or (budget.scope == BudgetScope.AGENT and budget.agent_id == agent.pk))


@transaction.atomic
def budget_increase_request(*, budget, requested_limit_micros, reason: str, by_user=None, by_agent=None) -> Approval:
    """Ask finance for a higher monthly limit: by an agent the budget covers, or a person who owns one."""
    from agents.models import Agent, AgentStatus
    from billing.models import Budget
    from billing.services import MAX_MICROS, dollars, money

    if (by_user is None) == (by_agent is None):
        raise ValueError("exactly one of by_user, by_agent")
    budget = Budget.objects.select_related("team", "agent").get(pk=budget.pk)
    limit = money(requested_limit_micros, "monthly_limit_micros", maximum=MAX_MICROS)
    reason = _purpose(reason)
    if not reason:
        raise ValidationError({"reason": "Say why the budget should grow: finance decides on it."})
    if not budget.active:
        raise Conflict("This budget is switched off; ask finance directly.", code="budget_inactive")
    if limit <= budget.monthly_limit_micros:
        raise ValidationError({"monthly_limit_micros": f"Ask for more than today's {dollars(budget.monthly_limit_micros)}."})
    if by_agent is not None:
        agent = Agent.objects.get(pk=by_agent.pk)
        if not _covers(budget, agent):
            raise Budget.DoesNotExist  # what does not cover it, it need not know exists
        if agent.status != AgentStatus.ACTIVE:
            raise NotAllowed(f"Agent {agent.name} is {agent.status}.", code="agent_inactive")
    else:
        agents = Agent.objects.filter(owner=by_user).exclude(status=AgentStatus.RETIRED)
        if not any(_covers(budget, agent) for agent in agents):
            raise NotAllowed("Only the owner of an agent this budget covers may ask for more.", code="not_an_owner")
    now = timezone.now()
    try:
        with transaction.atomic():
            approval = _create_increase(budget=budget, limit=limit, reason=reason, by_user=by_user,
                                        by_agent=by_agent, now=now)
    except IntegrityError:  # one open request per asker and budget (a unique index: two at once make one)
        raise Conflict("You already have a pending request for this budget.", code="already_requested") from None
    audit_record(action="budget.increase_request", actor=by_user or by_agent, agent=by_agent or budget.agent,
                 resource=f"budget:{budget.pk}", outcome="pending_approval", reasons=[reason],
                 payload={"approval_id": str(approval.pk), "from_micros": budget.monthly_limit_micros,
                          "to_micros": limit})
    _announce(approval, "created")
    return approval


def _create_increase(*, budget, limit: int, reason: str, by_user, by_agent, now) -> Approval:
    from billing.services import dollars

    return Approval.objects.create(
        kind=ApprovalKind.BUDGET_INCREASE, budget=budget, requested_limit_micros=limit, requested_by=by_user,
        requested_by_agent=by_agent, purpose=reason, group=FINANCE, groups=[FINANCE],
        required_approvals=budget.approvals_required,
        reasons=[f"{budget.label}: from {dollars(budget.monthly_limit_micros)} to {dollars(limit)} a month"],
        created_at=now, expires_at=_expiry(now, seconds=(budget.approval_ttl_hours or 0) * 3600 or None),
    )


# --- deciding ----------------------------------------------------------------------------


def stake_in(*, user, approval: Approval) -> str | None:
    """Why this person may not decide this request though their group may (None when they may)."""
    from agents.models import Agent

    if approval.group in settings.WARDEN_APPROVAL_SELF_APPROVE_GROUPS:
        return None
    if approval.kind == ApprovalKind.BUDGET_INCREASE:
        if approval.requested_by_id == user.pk:
            return "you asked for this increase; another member of finance decides it"
        agent = approval.requested_by_agent
        if agent is not None and agent.owner_id == user.pk:
            return f"you own {agent.name}, which asked for this increase"
        return None
    action = approval.action
    if action.agent.owner_id == user.pk:
        return f"you own {action.agent.name}: separation of duties"
    chain = action.delegation_chain or []
    if any(hop.get("type") == "user" and hop.get("name") == user.get_username() for hop in chain):
        return f"you lent {action.agent.name} its authority (its delegation chain): separation of duties"
    hop_agents = [hop["id"] for hop in chain if hop.get("type") == "agent" and hop.get("id")]
    owned = Agent.objects.filter(pk__in=hop_agents, owner_id=user.pk).values_list("name", flat=True).first()
    if owned:
        return f"you own {owned}, in {action.agent.name}'s delegation chain: separation of duties"
    return None


def may_decide(*, user, approval: Approval) -> str | None:
    """Why this person may not decide this request now (None when they may)."""
    if not approval_may_decide(user=user, approval=approval):
        return f"this request is for {' and '.join(approval.groups or [approval.group])} to decide"
    return stake_in(user=user, approval=approval)


class _Superseded(Exception):
    """The agent was suspended (or its key revoked) while this approval was being decided."""


def approval_decide(*, approval: Approval, by, verdict: str, comment: str = "") -> Approval:
    """Approve or deny; exactly one decision wins. Raises ValidationError, NotAllowed or Conflict."""
    if verdict not in ApprovalVerdict.values:
        raise ValidationError({"verdict": "Either approve or deny."})
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT:
        raise ValidationError({"comment": f"At most {MAX_COMMENT} characters."})
    correlation = approval.action.correlation_id if approval.action_id else None
    with correlation_scope(correlation):  # the whole story of an action under one correlation id
        try:
            return _decide(approval_id=approval.pk, by=by, verdict=verdict, comment=clean_text(comment))
        except _Superseded:  # judged again: this time the agent's new state is read before anything is granted
            return _decide(approval_id=approval.pk, by=by, verdict=verdict, comment=clean_text(comment))


@transaction.atomic
def _decide(*, approval_id, by, verdict: str, comment: str) -> Approval:
    """Locks, in the order completions and the sweep take them: the request, its action, budget periods,
    then audit chain heads (every audit event is written last)."""
    approval = (Approval.objects.select_for_update(of=("self",), no_key=True)
                .select_related("action__agent__team", "budget__team", "budget__agent", "requested_by_agent")
                .get(pk=approval_id))
    refusal = may_decide(user=by, approval=approval)
    if refusal:
        raise NotAllowed(f"You cannot decide this request: {refusal}.", code="may_not_decide")
    now = timezone.now()
    if approval.status != ApprovalStatus.PENDING:
        who = f" by {approval.decided_by.get_username()}" if approval.decided_by_id else ""
        raise Conflict(f"This request was already {approval.status}{who}.", code="already_decided")
    if approval.expires_at is not None and approval.expires_at <= now:
        raise Conflict("This request has expired; the agent must ask again.", code="expired")
    earlier = list(approval.decisions.all())
    if any(decision.decided_by_id == by.pk for decision in earlier):
        raise Conflict("You have already decided this request; it needs another approver.", code="already_approved")
    groups = approval.groups or [approval.group]
    satisfied = {decision.group for decision in earlier if decision.verdict == ApprovalVerdict.APPROVE}
    mine = [group for group in groups if by.is_superuser or group in user_groups(by)]
    acting_for = next((group for group in mine if group not in satisfied), mine[0] if mine else groups[0])
    ApprovalDecision.objects.create(approval=approval, decided_by=by, verdict=verdict, comment=comment,
                                    decided_at=now, group=acting_for)
    approvals = sum(1 for decision in earlier if decision.verdict == ApprovalVerdict.APPROVE) + (verdict == "approve")
    satisfied |= {acting_for} if verdict == ApprovalVerdict.APPROVE else set()
    said = f"{'approved' if verdict == 'approve' else 'denied'} by {by.get_username()}" + (f": {comment}" if comment else "")

    if verdict == ApprovalVerdict.DENY:
        outcome = (ApprovalStatus.DENIED, said, 0)
    elif approvals < approval.required_approvals or not satisfied >= set(groups):
        outcome = None  # waits for the other approver(s)
    elif approval.kind == ApprovalKind.BUDGET_INCREASE:
        outcome = _approve_increase(approval, by=by, said=said)
    else:
        outcome = _approve_action(approval, said=said, now=now)

    audit_record(action=f"approval.{verdict}", actor=by, agent=_subject(approval), resource=f"approval:{approval.pk}",
                 outcome=verdict, reasons=[comment] if comment else [],
                 delegation_chain=(approval.action.delegation_chain or []) if approval.action_id else [],
                 payload={"approval_id": str(approval.pk), "group": acting_for, "approvals": approvals,
                          "required": approval.required_approvals, "groups": groups})
    if outcome is None:
        _announce(approval, "approved_once", by=by)
        return approval
    status, reason, reserved = outcome
    _finish(approval, status=status, by=by, comment=comment, now=now, reason=reason, reserved=reserved)
    if (approval.kind == ApprovalKind.ACTION and status == ApprovalStatus.APPROVED
            and not all(_usable_now(approval.action.agent_id, approval.action.key_id))):
        # The agent's chain head is held now: a suspension or key revocation that committed while this was
        # decided has written to it first, and this fresh read sees it. Grant nothing: decide again.
        raise _Superseded
    return approval


def _subject(approval: Approval):
    """The agent whose audit chain records the request."""
    if approval.kind == ApprovalKind.ACTION:
        return approval.action.agent
    return approval.requested_by_agent or approval.budget.agent


def _chain_of(agent) -> str:
    return f"agent:{agent.pk}" if agent is not None else "global"


def _approve_action(approval: Approval, *, said: str, now) -> tuple[str, str, int]:
    """Judge the present before granting: the agent, its key and delegation now, Warden's price now, and the
    budget step now (what was affordable when asked may not be any more). (status, reason, reserved)."""
    from agents.models import Delegation
    from agents.selectors import delegation_state
    from billing import services as billing

    from .gate import clean_request

    action = Action.objects.select_for_update(of=("self",), no_key=True).select_related("agent__team").get(
        pk=approval.action_id)
    active, key_usable = _usable_now(action.agent_id, action.key_id)
    problem = None
    if not active:
        problem = f"{action.agent.name} is {action.agent.status} now"
    elif not key_usable:
        problem = "the agent key it asked with is revoked or expired now"
    elif action.delegation_id:
        state = delegation_state(Delegation.objects.get(pk=action.delegation_id), at=now)
        problem = state.problem or (None if action.action in state.scopes
                                    else f"the delegation no longer lends {action.action}")
    cleaned = clean_request(action=action.action, resource=action.resource, context=action.context)
    if problem is None:
        estimate = billing.estimate_cost(action=action.action, resource=action.resource, cleaned=cleaned, at=now)
        problem = estimate.problem
    if problem is None:
        problem = _flow_now(action, cleaned, now)
    if problem:
        return ApprovalStatus.DENIED, f"{said}; but {problem}", 0
    micros = max(estimate.micros, action.estimated_cost_micros)
    reservation = billing.reserve(agent=action.agent, action_id=action.pk, micros=micros, at=now,
                                  waive=approval.budget_ids)
    if reservation.outcome != ActionOutcome.ALLOWED:
        return (ApprovalStatus.DENIED,
                f"{said}; but the budget step at approval refused it: {'; '.join(reservation.reasons)}", 0)
    approval.action.estimated_cost_micros = micros
    return ApprovalStatus.APPROVED, said, reservation.micros


def _flow_now(action: Action, cleaned: dict, now) -> str | None:
    """The flow rule again at approval: what the request carries now (an agent over the API may have read
    more since it asked) against its receiver's clearance now. A person approved the flow they were shown;
    anything above it, or a flow they were not told of, is denied."""
    from .flow import OUTBOUND, api_flow_of_chain, sink_clearance
    from .gate import is_runtime_action

    if action.action not in OUTBOUND:
        return None
    shown = int((action.cedar_context or {}).get("data_classification", 0))
    carried = shown
    if not is_runtime_action(action):  # a run's label cannot rise while it waits; an API agent's can
        carried = max(shown, api_flow_of_chain(agent_id=action.agent_id, chain=action.delegation_chain, now=now,
                                               declared=cleaned.get("declared_label")).classification)
    sink, sink_name = sink_clearance(action=action.action, resource=action.resource, host=cleaned.get("host"))
    told = any(reason.startswith("data flow:") for reason in action.reasons)
    if carried > sink and (carried > shown or not told):
        from agents.models import Clearance

        return (f"data flow: {sink_name} is cleared for {Clearance(sink).label} data and the request now carries "
                f"{Clearance(carried).label} data")
    return None


def _approve_increase(approval: Approval, *, by, said: str) -> tuple[str, str, int]:
    from billing.models import Budget
    from billing.services import budget_update, dollars

    budget = Budget.objects.get(pk=approval.budget_id)
    if not budget.active:
        return ApprovalStatus.DENIED, f"{said}; but the budget was switched off meanwhile", 0
    if budget.monthly_limit_micros >= approval.requested_limit_micros:
        return ApprovalStatus.APPROVED, f"{said}; the limit was already {dollars(budget.monthly_limit_micros)}", 0
    budget_update(budget=budget, by=by, monthly_limit_micros=approval.requested_limit_micros)
    return ApprovalStatus.APPROVED, said, 0


def _finish(approval: Approval, *, status: str, by, comment: str, now, reason: str, reserved: int = 0) -> None:
    """The outcome: the request and, for an action, the Action (allowed with its reservation, or denied)."""
    updated = Approval.objects.filter(pk=approval.pk, status=ApprovalStatus.PENDING).update(
        status=status, decided_at=now, decided_by=by, note=comment)
    if updated != 1:  # the row is locked by the caller: only a bug gets here
        raise Conflict("This request was decided meanwhile.", code="already_decided")
    approval.status, approval.decided_at, approval.decided_by, approval.note = status, now, by, comment
    if approval.kind == ApprovalKind.ACTION:
        allowed = status == ApprovalStatus.APPROVED
        action = approval.action
        action.outcome = ActionOutcome.ALLOWED if allowed else ActionOutcome.DENIED
        action.reserved_micros, action.reasons = reserved, [*action.reasons, reason]
        action.allowed_at = now if allowed else None
        Action.objects.filter(pk=action.pk).update(outcome=action.outcome, reserved_micros=reserved,
                                                   reasons=action.reasons, allowed_at=action.allowed_at,
                                                   estimated_cost_micros=action.estimated_cost_micros)
    audit_record(action=f"approval.{status}", actor=by, agent=_subject(approval), resource=f"approval:{approval.pk}",
                 outcome=status, reasons=[reason],
                 delegation_chain=(approval.action.delegation_chain or []) if approval.action_id else [],
                 payload={"approval_id": str(approval.pk), "kind": approval.kind, "reserved_micros": reserved,
                          **({"action_id": str(approval.action_id)} if approval.action_id else {}),
                          **({"budget_id": approval.budget_id} if approval.budget_id else {})})
    _announce(approval, status, by=by)


def approvals_withdraw(*, agent, reason: str, action_ids=None) -> int:
    """Deny what an agent that was just suspended or retired still waits for (nobody should approve it now);
    with `action_ids`, only what those actions wait for (a cancelled run's)."""
    withdrawn = 0
    with transaction.atomic():
        waiting = Approval.objects.select_for_update(of=("self",), no_key=True).filter(
            status=ApprovalStatus.PENDING, action__agent=agent)
        if action_ids is not None:
            waiting = waiting.filter(action_id__in=list(action_ids))
        waiting = list(waiting.select_related("action__agent__team").order_by("created_at"))
        for approval in waiting:
            with correlation_scope(approval.action.correlation_id):
                _finish(approval, status=ApprovalStatus.DENIED, by=None, comment="", now=timezone.now(),
                        reason=f"withdrawn: {reason}")
            withdrawn += 1
    return withdrawn


# --- expiry and reminders (beat) -------------------------------------------------------------------


def approvals_expire(*, now: dt.datetime | None = None, batch: int = 100) -> int:
    """Deny what nobody decided in time; each expiry is audited. Returns how many expired."""
    now = now or timezone.now()
    expired = 0
    while True:
        with transaction.atomic():
            due = list(Approval.objects.select_for_update(of=("self",), no_key=True, skip_locked=True)
                       .filter(status=ApprovalStatus.PENDING, expires_at__lte=now)
                       .select_related("action__agent__team", "budget__agent", "requested_by_agent")
                       .order_by("expires_at")[:batch])
            due.sort(key=lambda item: _chain_of(_subject(item)))  # chain heads in chain order, as the sweep
            for approval in due:
                with correlation_scope(approval.action.correlation_id if approval.action_id else None):
                    _finish(approval, status=ApprovalStatus.EXPIRED, by=None, comment="", now=now,
                            reason=f"the approval request expired at {approval.expires_at:%Y-%m-%d %H:%M} UTC "
                                   "without a decision")
            expired += len(due)
        if len(due) < batch:
            return expired


def approvals_remind(*, now: dt.datetime | None = None) -> int:
    """Tell each group, once, about its requests that lapse within WARDEN_APPROVAL_REMINDER_MINUTES."""
    from .approval_notices import deliver_on_commit

    now = now or timezone.now()
    window = dt.timedelta(minutes=settings.WARDEN_APPROVAL_REMINDER_MINUTES)
    reminded = 0
    # Requests that wait less than the window got their first notice recently enough: no reminder.
    due = Approval.objects.filter(status=ApprovalStatus.PENDING, reminded_at__isnull=True, expires_at__gt=now,
                                  expires_at__lte=now + window).filter(expires_at__gt=F("created_at") + window * 2)
    for approval_id in due.values_list("pk", flat=True):
        with transaction.atomic():
            if Approval.objects.filter(pk=approval_id, reminded_at__isnull=True).update(reminded_at=now) == 1:
                deliver_on_commit(approval_id, "reminder")
                reminded += 1
    return reminded


def _announce(approval: Approval, event: str, *, by=None) -> None:
    from .approval_notices import announce_on_commit

    announce_on_commit(approval, event, by=by)
