"""Reads of the registry, always through the permission funnel; delegation as it stands now."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Prefetch, QuerySet
from django.http import Http404
from django.utils import timezone

from governance.access import can
from governance.models import RoleGrant
from governance.selectors import agent_roles, live_grant_filter

from .models import Agent, AgentKey, AgentStatus, Delegation, Team


def live_grants():
    return RoleGrant.objects.filter(live_grant_filter(timezone.now())).select_related("role")


def agent_list(*, user) -> QuerySet[Agent]:
    if not can(user, "agent.view"):
        return Agent.objects.none()
    return Agent.objects.select_related("owner", "team").prefetch_related(
        Prefetch("role_grants", queryset=live_grants(), to_attr="live_grants")
    )


def agent_get(*, user, agent_id) -> Agent:
    """The agent, or 404 (also for ids that are not UUIDs or not visible)."""
    try:
        return agent_list(user=user).get(pk=agent_id)
    except (Agent.DoesNotExist, ValueError, TypeError):
        raise Http404("No such agent.") from None


def agent_keys(*, agent: Agent) -> QuerySet[AgentKey]:
    return agent.keys.select_related("created_by", "revoked_by").order_by("-created_at")


def agent_key_get(*, agent: Agent, key_id) -> AgentKey:
    try:
        return agent.keys.get(pk=key_id)
    except (AgentKey.DoesNotExist, ValueError, TypeError):
        raise Http404("No such key.") from None


def agent_delegations(*, agent: Agent) -> dict[str, QuerySet[Delegation]]:
    related = ("delegator_user", "delegator_agent", "delegate", "parent")
    return {
        "received": Delegation.objects.filter(delegate=agent).select_related(*related),
        "given": Delegation.objects.filter(delegator_agent=agent).select_related(*related),
    }


def delegation_get(*, user, delegation_id) -> Delegation:
    if not can(user, "agent.view"):
        raise Http404("No such delegation.")
    try:
        return Delegation.objects.select_related("delegate", "delegator_user", "delegator_agent").get(pk=delegation_id)
    except (Delegation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such delegation.") from None


def key_state(key: AgentKey) -> str:
    if key.revoked_at:
        return "revoked"
    if key.expires_at and key.expires_at <= timezone.now():
        return "expired"
    return "active"


def teams() -> QuerySet[Team]:
    return Team.objects.all()


def agent_grants(*, agent: Agent):
    return RoleGrant.objects.filter(agent=agent).select_related("role", "granted_by").order_by("revoked_at", "-granted_at")


def agent_actions(*, agent: Agent, limit: int = 25):
    from governance.models import Action

    return Action.objects.filter(agent=agent).select_related("approval").order_by("-created_at")[:limit]


# --- delegation, judged at every use ------------------------------------------------------------


def delegation_hops(delegation: Delegation) -> list[Delegation]:
    """The hops from the root down to `delegation`, each with its delegator and delegate loaded."""
    hops = []
    node = delegation
    while node is not None:
        hops.append(node)
        node = (
            Delegation.objects.select_related("delegator_user", "delegator_agent", "delegate").get(pk=node.parent_id)
            if node.parent_id
            else None
        )
    return list(reversed(hops))


@dataclass(frozen=True)
class DelegationState:
    """A delegation as it stands at one moment, not as it was when created."""

    chain: list[dict]  # as recorded in audit events: the root delegator, then each hop's delegate
    problem: str | None  # why it cannot be used at all now (None when it can)
    scopes: frozenset[str]  # what it lends now
    narrowed: frozenset[str]  # what its last hop names but the root delegator no longer holds
    root: str  # who lent the authority first


def _root_scopes(root: Delegation, at: dt.datetime) -> tuple[frozenset[str] | None, str | None]:
    """What the root delegator holds now (None: everything in the catalogue), or why it may lend nothing."""
    if root.delegator_user_id:
        user = root.delegator_user
        if not user.is_active:
            return frozenset(), f"delegating user {user.get_username()} is no longer active"
        if not can(user, "agent.manage"):
            return frozenset(), f"delegating user {user.get_username()} may no longer manage agents"
        return None, None
    held = agent_roles(root.delegator_agent_id, at=at).scopes
    if "agent.delegate" not in held:
        return frozenset(), f"delegating agent {root.delegator_agent.name} no longer holds agent.delegate"
    return held, None


def delegation_state(delegation: Delegation, *, at: dt.datetime | None = None) -> DelegationState:
    """Every hop checked now: unrevoked, unexpired, its delegating and receiving agents still active, its
    delegator still entitled to lend (the root by its roles or its group, every hop below by what the hop
    above still lends it, agent.delegate included); and what it lends now: each hop's scopes, narrowed
    to what the hop above lends now, so a role revoked upstream narrows everything below it at once.
    """
    at = at or timezone.now()
    hops = delegation_hops(delegation)
    root = hops[0]
    if root.delegator_user_id:
        chain = [{"type": "user", "name": root.delegator_user.get_username()}]
        root_name = root.delegator_user.get_username()
    else:
        chain = [{"type": "agent", "name": root.delegator_agent.name, "id": str(root.delegator_agent_id)}]
        root_name = root.delegator_agent.name
    held, problem = _root_scopes(root, at)  # what the delegator of the next hop holds now (None: all)
    for depth, hop in enumerate(hops):
        chain.append({"type": "agent", "name": hop.delegate.name, "id": str(hop.delegate_id),
                      "delegation": str(hop.pk), "scopes": sorted(hop.scopes)})
        label = f"delegation {hop.pk}"
        if problem:
            continue
        if hop.revoked_at is not None:
            problem = f"{label} was revoked"
        elif hop.expires_at <= at:
            problem = f"{label} expired at {hop.expires_at.isoformat()}"
        elif hop.delegator_agent_id and hop.delegator_agent.status != AgentStatus.ACTIVE:
            problem = f"{label}: delegating agent {hop.delegator_agent.name} is {hop.delegator_agent.status}"
        elif hop.delegate.status != AgentStatus.ACTIVE:
            problem = f"{label}: agent {hop.delegate.name} is {hop.delegate.status}"
        elif depth > 0 and "agent.delegate" not in held:
            problem = f"{label}: {hop.delegator_agent.name} is no longer lent agent.delegate"
        if depth < len(hops) - 1:
            held = set(hop.scopes) if held is None else held & set(hop.scopes)
    last = frozenset(hops[-1].scopes)
    now_lent = last if held is None else last & frozenset(held)
    return DelegationState(chain=chain, problem=problem, scopes=frozenset() if problem else now_lent,
                           narrowed=last - now_lent, root=root_name)
