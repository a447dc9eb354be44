"""The one permission funnel for humans: pages, htmx fragments, API and websockets.

Humans belong to groups; a group grants capabilities. Every check anywhere in
Warden is `can(user, "<capability>")` (or the decorators/permission classes
built on it), so a page and its API can never disagree.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

ADMIN, FINANCE, SECURITY, VIEWER = "admin", "finance", "security", "viewer"
GROUPS = (ADMIN, FINANCE, SECURITY, VIEWER)

# capability -> groups that hold it
CAPABILITIES: dict[str, frozenset[str]] = {
    "agent.view": frozenset({ADMIN, FINANCE, SECURITY, VIEWER}),
    "agent.manage": frozenset({ADMIN}),
    "agent.suspend": frozenset({ADMIN, SECURITY}),
    # Runs of agents Warden's workers execute: everyone reads; admins start them; admins and security
    # (who hold the kill switch) cancel them.
    "run.view": frozenset({ADMIN, FINANCE, SECURITY, VIEWER}),
    "run.manage": frozenset({ADMIN}),
    "run.cancel": frozenset({ADMIN, SECURITY}),
    "policy.view": frozenset({ADMIN, SECURITY, VIEWER}),
    "policy.manage": frozenset({ADMIN}),
    # Approvals are routed to a group (@escalate("<group>"), finance for budgets): each of these groups
    # sees and decides what is routed to it; admins see the whole queue (governance.selectors).
    "approval.view": frozenset({ADMIN, FINANCE, SECURITY}),
    "approval.decide": frozenset({ADMIN, FINANCE, SECURITY}),
    "budget.view": frozenset({ADMIN, FINANCE, VIEWER}),
    "budget.manage": frozenset({FINANCE}),
    "audit.view": frozenset({SECURITY}),
    "data_view.view": frozenset({ADMIN, FINANCE, SECURITY, VIEWER}),
    "data_view.manage": frozenset({ADMIN}),
    # MCP servers behind the gateway (agents/gateway/registry.py): everyone reads; admins register them.
    "mcp.view": frozenset({ADMIN, FINANCE, SECURITY, VIEWER}),
    "mcp.manage": frozenset({ADMIN}),
    # Anomaly alerts (governance/anomalies.py): security watches agents, admins run them, finance pays for them.
    "alert.view": frozenset({ADMIN, FINANCE, SECURITY}),
}


def user_groups(user) -> frozenset[str]:
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return frozenset()
    cached = getattr(user, "_warden_groups", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        user._warden_groups = cached
    return cached


def can(user, capability: str) -> bool:
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown capability {capability!r}")
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return bool(user_groups(user) & CAPABILITIES[capability])


def capabilities_of(user) -> frozenset[str]:
    return frozenset(name for name in CAPABILITIES if can(user, name))


def require(capability: str):
    """Page/fragment decorator: sign-in first, then the capability (403 otherwise)."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not can(request.user, capability):
                raise PermissionDenied(capability)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
