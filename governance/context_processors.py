from .access import can

# The console's sections, in navigation order: (label, url name, capability).
SECTIONS = (
    ("Agents", "agents:list", "agent.view"),
    ("Runs", "runs:list", "run.view"),
    ("Policies", "governance:policies", "policy.view"),
    ("Data views", "governance:data-views", "data_view.view"),
    ("MCP servers", "mcp:servers", "mcp.view"),
    ("Approvals", "governance:approvals", "approval.view"),
    ("Budgets", "billing:budgets", "budget.view"),
    ("Audit", "audit:timeline", "audit.view"),
)


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_sections": ()}
    return {"nav_sections": [(label, url) for label, url, capability in SECTIONS if can(user, capability)]}
