"""Reads of the registry, always through the permission funnel."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from django.http import Http404
from django.utils import timezone

from governance.access import can
from governance.models import RoleGrant

from .models import Agent, AgentKey, Delegation, Team


def live_grants():
    return RoleGrant.objects.filter(revoked_at__isnull=True).select_related("role")


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
