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
