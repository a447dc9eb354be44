"""Writes of the agent registry: lifecycle, keys, delegation, teams.

Every change is recorded by `audit_record` in the same transaction.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from governance import credentials
from governance.exceptions import Conflict
from governance.approvals import approvals_withdraw
from governance.gate import actions_cancel, complete_action, request_action
from governance.models import Role, RoleGrant
from governance.scopes import unknown_scopes
from governance.selectors import agent_roles

from . import selectors
from .models import Agent, AgentKey, AgentStatus, Clearance, Delegation, Team

MAX_DELEGATION_DEPTH = getattr(settings, "WARDEN_MAX_DELEGATION_DEPTH", 3)
MAX_DELEGATION_TTL = dt.timedelta(days=90)

# status -> statuses it may move to (retired is final)
TRANSITIONS = {
    AgentStatus.PENDING: {AgentStatus.ACTIVE, AgentStatus.SUSPENDED, AgentStatus.RETIRED},
    AgentStatus.ACTIVE: {AgentStatus.SUSPENDED, AgentStatus.RETIRED},
    AgentStatus.SUSPENDED: {AgentStatus.ACTIVE, AgentStatus.RETIRED},
    AgentStatus.RETIRED: set(),
}


def _locked(agent: Agent) -> Agent:
    # NO KEY: the gate's inserts reference the agent (a KEY SHARE lock each) and must not wait on this.
    return Agent.objects.select_for_update(of=("self",), no_key=True).select_related("team").get(pk=agent.pk)


def _check_lists(*, allowed_models, allowed_tools) -> None:
    for field, values in (("allowed_models", allowed_models), ("allowed_tools", allowed_tools)):
        if len(values) > 200:
            raise ValidationError({field: "At most 200 entries."})
        for value in values:
            if not isinstance(value, str) or not value.strip() or len(value) > 100:
                raise ValidationError({field: "Each entry must be a non-empty name of at most 100 characters."})


def _roles_by_name(names) -> list[Role]:
    names = list(dict.fromkeys(names))
    roles = list(Role.objects.filter(name__in=names))
    missing = sorted(set(names) - {role.name for role in roles})
    if missing:
        raise ValidationError({"roles": f"Unknown role(s): {', '.join(missing)}."})
    return roles


# --- teams ---------------------------------------------------------------------


@transaction.atomic
def team_create(*, name: str, display_name: str = "", by) -> Team:
    if Team.objects.filter(name=name).exists():
        raise ValidationError({"name": f"A team named {name!r} already exists."})
    team = Team.objects.create(name=name, display_name=display_name or name)
    audit_record(action="team.create", actor=by, resource=f"team:{team.name}", payload={"name": name})
    return team


# --- lifecycle -------------------------------------------------------------------


@transaction.atomic
def agent_register(
    *,
    name: str,
    owner,
    team: Team,
    by,
    description: str = "",
    roles=(),
    allowed_models=(),
    allowed_tools=(),
    clearance: int = Clearance.INTERNAL,
    activate: bool = True,
    program: str = "",
) -> Agent:
    from .runtime.programs import program_check

    if not owner.is_active:
        raise ValidationError({"owner": "The owner must be an active user."})
    allowed_models, allowed_tools = list(allowed_models), list(allowed_tools)
    _check_lists(allowed_models=allowed_models, allowed_tools=allowed_tools)
    program = program_check(program)  # an unknown program is refused here, not when a run starts
    role_objects = _roles_by_name(roles)
    now = timezone.now()
    try:
        with transaction.atomic():
            agent = Agent.objects.create(
                name=name,
                description=description,
                owner=owner,
                team=team,
                status=AgentStatus.ACTIVE if activate else AgentStatus.PENDING,
                status_changed_at=now,
                status_changed_by=by,
                allowed_models=allowed_models,
                allowed_tools=allowed_tools,
                clearance=clearance,
                program=program,
                created_by=by,
                updated_by=by,
            )
    except IntegrityError:
        raise ValidationError({"name": f"An agent named {name!r} already exists."}) from None
    for role in role_objects:
        RoleGrant.objects.create(agent=agent, role=role, granted_by=by)
    audit_record(
        action="agent.register",
        actor=by,
        agent=agent,
        resource=f"agent:{agent.name}",
        payload={
            "owner": owner.get_username(),
            "team": team.name,
            "status": agent.status,
            "roles": [role.name for role in role_objects],
            "allowed_models": allowed_models,
            "allowed_tools": allowed_tools,
            "clearance": Clearance(clearance).label,
            "program": program,
        },
    )
    return agent


UPDATABLE = ("description", "owner", "team", "allowed_models", "allowed_tools", "clearance", "program")


@transaction.atomic
def agent_update(*, agent: Agent, by, **changes) -> Agent:
    unknown = set(changes) - set(UPDATABLE)
    if unknown:
        raise ValidationError({name: "This field cannot be changed here." for name in unknown})
    agent = _locked(agent)
    if agent.status == AgentStatus.RETIRED:
        raise Conflict("A retired agent cannot be changed.", code="agent_retired")
    if "owner" in changes and not changes["owner"].is_active:
        raise ValidationError({"owner": "The owner must be an active user."})
    _check_lists(
        allowed_models=changes.get("allowed_models", agent.allowed_models),
        allowed_tools=changes.get("allowed_tools", agent.allowed_tools),
    )
    if "program" in changes:
        from .runtime.programs import program_check

        changes["program"] = program_check(changes["program"])
    diff = {}
    for field, value in changes.items():
        old = getattr(agent, field)
        if old != value:
            diff[field] = {"from": _display(old), "to": _display(value)}
            setattr(agent, field, value)
    if diff:
        agent.updated_by = by
        agent.save()
        audit_record(action="agent.update", actor=by, agent=agent, resource=f"agent:{agent.name}", payload=diff)
    return agent


def _display(value):
    if hasattr(value, "get_username"):
        return value.get_username()
    if isinstance(value, Team):
        return value.name
    return value


def _transition(agent: Agent, *, to: str, by, reason: str, action: str) -> Agent:
    agent = _locked(agent)
    if to not in TRANSITIONS[agent.status]:
        raise Conflict(
            f"An agent that is {agent.status} cannot be {action.split('.')[-1]}d"
            + (" (retired is final)." if agent.status == AgentStatus.RETIRED else "."),
            code="invalid_transition",
        )
    previous = agent.status
    agent.status = to
    agent.status_reason = reason
    agent.status_changed_at = timezone.now()
    agent.status_changed_by = by
    agent.updated_by = by
    agent.save(update_fields=["status", "status_reason", "status_changed_at", "status_changed_by", "updated_by", "updated_at"])
    audit_record(
        action=action,
        actor=by,
        agent=agent,
        resource=f"agent:{agent.name}",
        reasons=[reason] if reason else [],
        payload={"from": previous, "to": to},
    )
    return agent


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why: the reason is recorded in the audit log."})
    if len(reason) > 500:
        raise ValidationError({"reason": "At most 500 characters."})
    return reason


@transaction.atomic
def agent_activate(*, agent: Agent, by) -> Agent:
    agent = _locked(agent)
    if agent.status != AgentStatus.PENDING:
        raise Conflict(f"Only a pending agent can be activated; this one is {agent.status}.", code="invalid_transition")
    return _transition(agent, to=AgentStatus.ACTIVE, by=by, reason="", action="agent.activate")


def agent_suspend(*, agent: Agent, by, reason: str) -> Agent:
    """The kill switch: effective on the agent's very next gate call, and what it was allowed but has
    not completed is cancelled, its reservations released. Pressed on a suspended agent, it runs the
    cancellation again (should the first have been cut short) and changes nothing else.

    Two transactions, in this order on purpose: the status change (with its
    audit event, which holds the agent's chain head until commit) first, then
    the cancellation, which locks actions, budget periods and chain heads in
    the order the gate and completions do. A gate decision that was in flight
    either committed before the first (the cancellation sees its action) or
    meets the new status when it re-reads it after taking the chain head.
    """
    reason = _require_reason(reason)
    with transaction.atomic():
        current = _locked(agent)
        if current.status == AgentStatus.SUSPENDED:
            agent = current  # pressed again: the cancellation below runs again, nothing else changes
        else:
            agent = _transition(current, to=AgentStatus.SUSPENDED, by=by, reason=reason, action="agent.suspend")
    # Its runs stop at their next step; then what waits for a person (an approval decided meanwhile makes an
    # allowed action to cancel); then what it was allowed and has not completed.
    from .runtime.services import runs_cancel_for_agent

    runs_cancel_for_agent(agent=agent, by=by, reason=f"agent {agent.name} was suspended: {agent.status_reason}")
    approvals_withdraw(agent=agent, reason=f"agent {agent.name} was suspended: {agent.status_reason}")
    actions_cancel(agent=agent, by=by, reason=f"agent {agent.name} was suspended: {agent.status_reason}")
    return agent


@transaction.atomic
def agent_resume(*, agent: Agent, by, reason: str = "") -> Agent:
    agent = _locked(agent)
    if agent.status != AgentStatus.SUSPENDED:
        raise Conflict(f"Only a suspended agent can be resumed; this one is {agent.status}.", code="invalid_transition")
    return _transition(agent, to=AgentStatus.ACTIVE, by=by, reason=(reason or "").strip()[:500], action="agent.resume")


def agent_retire(*, agent: Agent, by, reason: str) -> Agent:
    """Final: keys and delegations go with it, open allowed actions are cancelled; history stays.

    Two transactions, for the reason agent_suspend gives.
    """
    reason = _require_reason(reason)
    with transaction.atomic():
        agent = _transition(agent, to=AgentStatus.RETIRED, by=by, reason=reason, action="agent.retire")
        now = timezone.now()
        AgentKey.objects.filter(agent=agent, revoked_at__isnull=True).update(
            revoked_at=now, revoked_by=by, revoked_reason="agent retired"
        )
        Delegation.objects.filter(revoked_at__isnull=True, delegate=agent).update(
            revoked_at=now, revoked_by=by, revoked_reason="agent retired"
        )
        Delegation.objects.filter(revoked_at__isnull=True, delegator_agent=agent).update(
            revoked_at=now, revoked_by=by, revoked_reason="delegator retired"
        )
    from .runtime.services import runs_cancel_for_agent

    runs_cancel_for_agent(agent=agent, by=by, reason=f"agent {agent.name} was retired: {reason}")
    approvals_withdraw(agent=agent, reason=f"agent {agent.name} was retired: {reason}")
    actions_cancel(agent=agent, by=by, reason=f"agent {agent.name} was retired: {reason}")
    return agent


# --- keys ----------------------------------------------------------------------------


def _check_expiry(expires_at: dt.datetime | None) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})


@transaction.atomic
def agent_key_issue(*, agent: Agent, by, name: str = "", expires_at: dt.datetime | None = None) -> tuple[AgentKey, str]:
    """A new key; the secret is returned here once and never stored."""
    agent = _locked(agent)
    if agent.status == AgentStatus.RETIRED:
        raise Conflict("A retired agent cannot get new keys.", code="agent_retired")
    _check_expiry(expires_at)
    new = credentials.new_secret(credentials.AGENT_PREFIX)
    key = AgentKey.objects.create(
        agent=agent, name=name, lookup=new.lookup, digest=new.digest, created_by=by, expires_at=expires_at
    )
    audit_record(
        action="agent.key.issue",
        actor=by,
        agent=agent,
        resource=f"agent_key:{key.pk}",
        payload={"key_id": str(key.pk), "lookup": key.lookup, "name": name, "expires_at": expires_at},
    )
    return key, new.secret


@transaction.atomic
def agent_key_revoke(*, key: AgentKey, by, reason: str = "") -> AgentKey:
    key = AgentKey.objects.select_for_update(of=("self",), no_key=True).select_related("agent__team").get(pk=key.pk)
    if key.revoked_at is not None:
        return key  # revoking twice changes nothing
    key.revoked_at = timezone.now()
    key.revoked_by = by
    key.revoked_reason = (reason or "").strip()[:200]
    key.save(update_fields=["revoked_at", "revoked_by", "revoked_reason"])
    audit_record(
        action="agent.key.revoke",
        actor=by,
        agent=key.agent,
        resource=f"agent_key:{key.pk}",
        reasons=[key.revoked_reason] if key.revoked_reason else [],
        payload={"key_id": str(key.pk), "lookup": key.lookup},
    )
    return key


@transaction.atomic
def agent_key_rotate(*, key: AgentKey, by, grace_seconds: int = 0) -> tuple[AgentKey, str]:
    """A new key for the same agent; the old one stops now or after a grace period."""
    if not 0 <= grace_seconds <= 7 * 24 * 3600:
        raise ValidationError({"grace_seconds": "Between 0 and 604800 (7 days)."})
    old = AgentKey.objects.select_for_update(of=("self",), no_key=True).select_related("agent").get(pk=key.pk)
    if old.revoked_at is not None:
        raise Conflict("A revoked key cannot be rotated; issue a new key instead.", code="key_revoked")
    new_key, secret = agent_key_issue(agent=old.agent, by=by, name=old.name, expires_at=old.expires_at if (
        old.expires_at and old.expires_at > timezone.now()) else None)
    if grace_seconds:
        cutoff = timezone.now() + dt.timedelta(seconds=grace_seconds)
        if old.expires_at is None or old.expires_at > cutoff:
            old.expires_at = cutoff
            old.save(update_fields=["expires_at"])
    else:
        agent_key_revoke(key=old, by=by, reason=f"rotated to {new_key.lookup}")
    audit_record(
        action="agent.key.rotate",
        actor=by,
        agent=old.agent,
        resource=f"agent_key:{old.pk}",
        payload={"old_key_id": str(old.pk), "new_key_id": str(new_key.pk), "grace_seconds": grace_seconds},
    )
    return new_key, secret


# --- delegation ------------------------------------------------------------------------


@transaction.atomic
def delegation_create(
    *,
    delegate: Agent,
    scopes,
    expires_at: dt.datetime,
    by_user=None,
    by_agent: Agent | None = None,
    parent: Delegation | None = None,
    max_depth: int | None = None,
    purpose: str = "",
    created_by=None,
) -> Delegation:
    """Lend a subset of scopes to `delegate`. Never widens: checked hop by hop.

    - a human (an admin, or the delegate's owner) may lend any catalogue scope;
    - an agent may lend only scopes it holds: its own role scopes (and it needs
      `agent.delegate` among them) or, when re-delegating, its parent hop's scopes.
    """
    scopes = sorted(set(scopes))
    if not scopes:
        raise ValidationError({"scopes": "Delegate at least one scope."})
    unknown = unknown_scopes(scopes)
    if unknown:
        raise ValidationError({"scopes": f"Unknown scope(s): {', '.join(unknown)}."})
    if (by_user is None) == (by_agent is None):
        raise ValidationError("A delegation has exactly one delegator: a user or an agent.")
    now = timezone.now()
    _check_expiry(expires_at)
    if expires_at > now + MAX_DELEGATION_TTL:
        raise ValidationError({"expires_at": "A delegation lasts at most 90 days."})
    delegate = _locked(delegate)
    if delegate.status != AgentStatus.ACTIVE:
        raise Conflict(f"Agent {delegate.name} is {delegate.status}; only an active agent can receive a delegation.")

    if parent is not None:
        parent = Delegation.objects.select_for_update(of=("self",), no_key=True).select_related("delegate").get(pk=parent.pk)
        if by_agent is None or parent.delegate_id != by_agent.pk:
            raise ValidationError({"parent": "Only the agent that received a delegation can pass it on."})
        state = selectors.delegation_state(parent, at=now)
        if state.problem:
            raise Conflict(f"The parent delegation cannot be used: {state.problem}.", code="delegation_invalid")
        widened = sorted(set(scopes) - state.scopes)
        if widened:
            raise ValidationError({"scopes": f"A delegation cannot widen scopes; the parent does not hold {', '.join(widened)}."})
        if "agent.delegate" not in state.scopes:
            raise ValidationError({"scopes": "The parent delegation does not include agent.delegate."})
        if expires_at > parent.expires_at:
            raise ValidationError({"expires_at": "A delegation cannot outlive its parent."})
        depth = parent.depth + 1
        limit = parent.max_depth if max_depth is None else min(max_depth, parent.max_depth)
        chain_agents = {hop["id"] for hop in state.chain if hop["type"] == "agent"}
        if str(delegate.pk) in chain_agents:
            raise ValidationError({"delegate": "That agent is already in this delegation chain (no cycles)."})
    else:
        depth = 1
        limit = MAX_DELEGATION_DEPTH if max_depth is None else max_depth
        if by_agent is not None:
            by_agent = Agent.objects.get(pk=by_agent.pk)
            if by_agent.status != AgentStatus.ACTIVE:
                raise Conflict(f"Agent {by_agent.name} is {by_agent.status} and cannot delegate.")
            own = agent_roles(by_agent.pk, at=now).scopes
            if "agent.delegate" not in own:
                raise ValidationError({"scopes": f"Agent {by_agent.name} does not hold agent.delegate."})
            widened = sorted(set(scopes) - own)
            if widened:
                raise ValidationError({"scopes": f"A delegation cannot widen scopes; {by_agent.name} does not hold {', '.join(widened)}."})
            if by_agent.pk == delegate.pk:
                raise ValidationError({"delegate": "An agent cannot delegate to itself."})
    if not 1 <= limit <= MAX_DELEGATION_DEPTH:
        raise ValidationError({"max_depth": f"Between 1 and {MAX_DELEGATION_DEPTH}."})
    if depth > limit:
        raise ValidationError({"parent": f"The chain would be {depth} hops deep; at most {limit} allowed."})

    delegation = Delegation.objects.create(
        parent=parent,
        delegator_user=by_user,
        delegator_agent=by_agent,
        delegate=delegate,
        scopes=scopes,
        depth=depth,
        max_depth=limit,
        purpose=(purpose or "")[:200],
        expires_at=expires_at,
        created_by=by_user if by_user is not None else created_by,
    )
    audit_record(
        action="delegation.create",
        actor=by_user if by_user is not None else by_agent,
        agent=delegate,
        resource=f"delegation:{delegation.pk}",
        delegation_chain=selectors.delegation_state(delegation, at=now).chain,
        payload={"scopes": scopes, "depth": depth, "max_depth": limit, "expires_at": expires_at, "purpose": purpose},
    )
    return delegation


@transaction.atomic
def delegation_revoke(*, delegation: Delegation, by, reason: str = "") -> Delegation:
    delegation = Delegation.objects.select_for_update(of=("self",), no_key=True).select_related("delegate__team").get(pk=delegation.pk)
    if delegation.revoked_at is not None:
        return delegation
    delegation.revoked_at = timezone.now()
    delegation.revoked_by = by if isinstance(by, get_user_model()) else None
    delegation.revoked_reason = (reason or "").strip()[:200]
    delegation.save(update_fields=["revoked_at", "revoked_by", "revoked_reason"])
    audit_record(
        action="delegation.revoke",
        actor=by,
        agent=delegation.delegate,
        resource=f"delegation:{delegation.pk}",
        delegation_chain=selectors.delegation_state(delegation, at=delegation.revoked_at).chain,
        reasons=[delegation.revoked_reason] if delegation.revoked_reason else [],
        payload={"children_invalidated": delegation.children.filter(revoked_at__isnull=True).count()},
    )
    return delegation


def delegation_by_agent(*, agent: Agent, key, delegate_name: str, scopes, expires_at: dt.datetime,
                        parent_id=None, max_depth: int | None = None, purpose: str = "", idempotency_key=None):
    """An agent lends scopes to another agent: only through an allowed `agent.delegate` Action.

    Returns (action, delegation or None). The gate judges first (identity,
    scopes, policies, audit); only an allowed action creates the delegation,
    and the action is completed with the outcome: succeeded, or failed (and
    the error raised) when the delegation itself is refused.

    Three transactions, each writing to one audit chain: the decision and the
    completion to the delegator's, the delegation to the delegate's. One
    transaction holding both chain heads, taken in whatever order the two
    agents come, could deadlock with another that takes them the other way
    (a delegation back, or the sweep, which takes heads in chain order).
    """
    action = request_action(
        agent=agent, key=key, action="agent.delegate", resource=delegate_name,
        context={"scopes": sorted(set(scopes))}, on_behalf_of=parent_id, idempotency_key=idempotency_key,
    )
    if action.outcome != "allowed" or action.status != "decided":
        return action, None
    try:
        parent = Delegation.objects.get(pk=parent_id) if parent_id else None
        delegation = delegation_create(
            delegate=Agent.objects.get(name=delegate_name), by_agent=agent, parent=parent, scopes=scopes,
            expires_at=expires_at, max_depth=max_depth, purpose=purpose,
        )
    except (ValidationError, Conflict):
        complete_action(action=action, status="failed", usage_source="warden")
        raise
    action = complete_action(action=action, status="succeeded", usage_source="warden")
    return action, delegation
