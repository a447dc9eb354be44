"""DRF side of the permission funnel: views declare a capability per method."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from agents.principal import AgentPrincipal
from governance.access import can


class HasCapability(BasePermission):
    """`capabilities = {"GET": "agent.view", "POST": "agent.manage", ...}` on the view."""

    message = "Your groups do not allow this."

    def has_permission(self, request, view) -> bool:
        required = getattr(view, "capabilities", {}).get(request.method)
        if request.method in ("HEAD", "OPTIONS") and required is None:
            required = view.capabilities.get("GET")
        if required is None:
            return False
        return can(request.user, required)


class IsAgent(BasePermission):
    """Only an agent key may call this endpoint."""

    message = "This endpoint is for agent keys."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, AgentPrincipal)
