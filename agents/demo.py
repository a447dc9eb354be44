"""The demo fleet `seed_demo` creates: a few teams, roles and agents. Idempotent."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from governance.models import Policy, Role
from governance.policy_templates import TEMPLATES
from governance.services import policy_create

from . import services
from .models import Agent, Clearance, Team

TEAMS = {"research": "Research", "support": "Customer Support", "finance-ops": "Finance Operations"}
ROLES = {
    "llm-user": ("Calls language models", ["llm.call"]),
    "researcher": ("Models, web tools and internal data", ["llm.call", "tool.call", "tool.http", "data.read"]),
    "orchestrator": ("Runs other agents", ["llm.call", "tool.call", "data.read", "agent.delegate"]),
    "integrator": ("Calls external APIs", ["llm.call", "external.call"]),
}
# (kind, name, $ per million input tokens, per million output tokens, per call) in micro-dollars
PRICES = [
    ("model", "gpt-4o-mini", 150_000, 600_000, 0),
    ("model", "gpt-4o", 2_500_000, 10_000_000, 0),
    ("model", "claude-haiku", 800_000, 4_000_000, 0),
    ("model", "claude-sonnet", 3_000_000, 15_000_000, 0),
    ("tool", "web-search", 0, 0, 5_000),
    ("tool", "pdf-reader", 0, 0, 1_000),
    ("tool", "planner", 0, 0, 0),
    ("tool", "payments-api", 0, 0, 20_000),
    ("tool", "ocr", 0, 0, 15_000),
    ("endpoint", "api.stripe.com", 0, 0, 0),
    ("endpoint", "*", 0, 0, 1_000),  # every other host reached over HTTP
]
# (name, classification, owning team, description)
DATA_VIEWS = [
    ("papers-index", Clearance.PUBLIC, "research", "Titles and abstracts of published papers."),
    ("support-tickets", Clearance.INTERNAL, "support", "Open and recent customer tickets."),
    ("crm-contacts", Clearance.CONFIDENTIAL, "support", "Customer names, e-mail addresses and plans."),
    ("supplier-invoices", Clearance.RESTRICTED, "finance-ops", "Invoices with bank details."),
]
# (scope, team, monthly limit in micro-dollars, over the limit)
BUDGETS = [
    ("organisation", None, 500_000_000, "deny"),
    ("team", "research", 100_000_000, "escalate"),
    ("team", "support", 50_000_000, "deny"),
]
FLEET = [
    ("paper-scout", "research", ["researcher"], "Finds and summarises new papers for the research team.",
     ["gpt-4o-mini", "claude-haiku"], ["web-search", "pdf-reader"], Clearance.INTERNAL),
    ("lab-orchestrator", "research", ["orchestrator"], "Plans literature reviews and hands work to other agents.",
     ["gpt-4o", "claude-sonnet"], ["planner"], Clearance.CONFIDENTIAL),
    ("ticket-triage", "support", ["llm-user"], "Labels and routes incoming support tickets.",
     ["gpt-4o-mini"], [], Clearance.INTERNAL),
    ("refund-helper", "support", ["integrator"], "Drafts refunds through the payments API for a human to confirm.",
     ["gpt-4o-mini"], ["payments-api"], Clearance.CONFIDENTIAL),
    ("invoice-reader", "finance-ops", ["researcher"], "Extracts line items from supplier invoices.",
     ["claude-haiku"], ["ocr"], Clearance.RESTRICTED),
]


@transaction.atomic
def demo_fleet_ensure(*, owner_username: str = "admin") -> list[str]:
    owner = get_user_model().objects.get(username=owner_username)
    for name, display in TEAMS.items():
        Team.objects.get_or_create(name=name, defaults={"display_name": display})
    for name, (description, scopes) in ROLES.items():
        Role.objects.get_or_create(name=name, defaults={"description": description, "scopes": scopes})
    for name in ("baseline-permit", "expensive-calls-need-finance", "confidential-data-needs-clearance",
                 "no-deep-delegation", "business-hours-only"):
        if not Policy.objects.filter(name=name).exists():
            description, body = TEMPLATES[name]
            policy_create(name=name, body=body, description=description, by=owner, reason="demo starter policy")
    from billing.models import Price
    from billing.services import price_set

    for kind, name, inp, out, call in PRICES:
        if not Price.objects.filter(kind=kind, name=name).exists():
            price_set(kind=kind, name=name, input_per_million_micros=inp, output_per_million_micros=out,
                      per_call_micros=call, by=owner, note="demo price")
    from billing.models import Budget
    from billing.services import budget_create

    for scope, team_name, limit, on_exceed in BUDGETS:
        team = Team.objects.get(name=team_name) if team_name else None
        if not Budget.objects.filter(scope=scope, team=team).exists():
            budget_create(scope=scope, team=team, monthly_limit_micros=limit, on_exceed=on_exceed, by=owner)
    from governance.models import DataView
    from governance.services import data_view_create

    for name, classification, team_name, description in DATA_VIEWS:
        if not DataView.objects.filter(name=name).exists():
            data_view_create(name=name, classification=classification, team=Team.objects.get(name=team_name),
                             description=description, by=owner)
    created = []
    for name, team, roles, description, models, tools, clearance in FLEET:
        if Agent.objects.filter(name=name).exists():
            continue
        services.agent_register(
            name=name, owner=owner, team=Team.objects.get(name=team), by=owner, roles=roles,
            description=description, allowed_models=models, allowed_tools=tools, clearance=clearance,
        )
        created.append(name)
    return created
