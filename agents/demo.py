"""The demo fleet `seed_demo` creates: a few teams, roles and agents. Idempotent."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from governance.models import Policy, Role
from governance.policy_templates import TEMPLATES
from governance.services import policy_create

from . import services
from .models import Agent, Clearance, Team

TEAMS = {"research": "Research", "support": "Customer Support", "finance-ops": "Finance Operations",
         "onboarding": "Customer Onboarding"}
ROLES = {
    "llm-user": ("Calls language models", ["llm.call"]),
    "researcher": ("Models, web tools and internal data", ["llm.call", "tool.call", "tool.http", "data.read"]),
    "orchestrator": ("Runs other agents", ["llm.call", "tool.call", "data.read", "agent.delegate"]),
    "integrator": ("Calls external APIs and tools", ["llm.call", "tool.call", "external.call"]),
}
# (kind, name, $ per million input tokens, per million output tokens, per call) in micro-dollars
PRICES = [
    ("model", "gpt-4o-mini", 150_000, 600_000, 0),
    ("model", "gpt-4o", 2_500_000, 10_000_000, 0),
    ("model", "claude-haiku", 800_000, 4_000_000, 0),
    ("model", "claude-sonnet", 3_000_000, 15_000_000, 0),
    ("model", "local-llm", 100_000, 100_000, 0),  # self-hosted: cleared for confidential data (DATA_SINKS)
    ("tool", "web-search", 0, 0, 5_000),
    ("tool", "pdf-reader", 0, 0, 1_000),
    ("tool", "planner", 0, 0, 0),
    ("tool", "payments-api", 0, 0, 20_000),
    ("tool", "ocr", 0, 0, 15_000),
    ("endpoint", "hooks.partner-crm.example", 0, 0, 2_000),
    ("tool", "email.send", 0, 0, 100),
    ("endpoint", "api.stripe.com", 0, 0, 0),
    ("endpoint", "*", 0, 0, 1_000),  # every other host reached over HTTP
]
# (name, classification, owning team, description)
DATA_VIEWS = [
    ("papers-index", Clearance.PUBLIC, "research", "Titles and abstracts of published papers."),
    ("support-tickets", Clearance.INTERNAL, "support", "Open and recent customer tickets."),
    ("crm-contacts", Clearance.CONFIDENTIAL, "support", "Customer names, e-mail addresses and plans."),
    ("supplier-invoices", Clearance.RESTRICTED, "finance-ops", "Invoices with bank details."),
    ("customers", Clearance.CONFIDENTIAL, "onboarding", "Customer accounts: company, contact, e-mail, plan, "
     "seats. Contacts and e-mails masked below confidential; below that, only new customers' rows."),
]
# What the demo's views serve (governance/dataviews.py): demo_data/ files.
DATA_VIEW_SOURCES = {
    "customers": {"source": "file:customers.jsonl",
                  "columns": ["id", "company", "contact", "email", "plan", "region", "stage", "seats", "mrr_usd",
                              "segment"],
                  "masks": {"contact": "confidential", "email": "confidential", "mrr_usd": "internal"},
                  "base_classification": Clearance.INTERNAL,  # the rest: company, plan, region, seats ...
                  "row_rules": [{"below": "confidential", "column": "segment", "in": ["new"]}], "max_rows": 50},
}
# How sensitive data each receiver may get (besides the defaults: models and tools internal, endpoints public).
DATA_SINKS = [("model", "local-llm", Clearance.CONFIDENTIAL, "self-hosted in the company's own cloud")]
# (scope, team, monthly limit in micro-dollars, over the limit)
BUDGETS = [
    ("organisation", None, 500_000_000, "deny"),
    ("team", "research", 100_000_000, "escalate"),
    ("team", "support", 50_000_000, "deny"),
]
PROGRAMS = "agents.runtime.demo"
FLEET = [
    ("paper-scout", "research", ["researcher"], "Finds and summarises new papers for the research team.",
     ["gpt-4o-mini", "claude-haiku"], ["web-search", "pdf-reader"], Clearance.INTERNAL, f"{PROGRAMS}.paper_scout"),
    ("lab-orchestrator", "research", ["orchestrator"], "Plans literature reviews and hands work to other agents.",
     ["gpt-4o", "claude-sonnet"], ["planner"], Clearance.CONFIDENTIAL, f"{PROGRAMS}.pipeline"),
    ("ticket-triage", "support", ["llm-user"], "Labels and routes incoming support tickets.",
     ["gpt-4o-mini", "claude-sonnet"], [], Clearance.INTERNAL, f"{PROGRAMS}.ticket_triage"),
    ("refund-helper", "support", ["integrator"], "Drafts refunds through the payments API for a human to confirm.",
     ["gpt-4o-mini"], ["payments-api", "email.send"], Clearance.CONFIDENTIAL, f"{PROGRAMS}.refund_helper"),
    ("invoice-reader", "finance-ops", ["researcher"], "Extracts line items from supplier invoices.",
     ["claude-haiku"], ["ocr"], Clearance.RESTRICTED, f"{PROGRAMS}.invoice_reader"),
    # The onboarding team: the lead decides, the analyst reads customer data, the writer talks to customers.
    ("onboarding-lead", "onboarding", ["orchestrator", "researcher"],
     "Decides onboarding priorities; hands analysis and customer mail to its team.",
     ["local-llm"], [], Clearance.CONFIDENTIAL, f"{PROGRAMS}.onboarding_lead"),
    ("onboarding-analyst", "onboarding", ["researcher"], "Profiles new customers from the customer data view.",
     ["local-llm"], [], Clearance.CONFIDENTIAL, f"{PROGRAMS}.onboarding_analyst"),
    ("welcome-writer", "onboarding", ["researcher"], "Drafts welcome notes; posts them to the partner agency's CRM.",
     ["local-llm", "gpt-4o-mini"], ["partner-crm"], Clearance.CONFIDENTIAL, f"{PROGRAMS}.welcome_writer"),
]
# The demo's CRM as an MCP server (agents/gateway/demo_mcp.py), registered as "crm" when WARDEN_DEMO_MCP_URL is
# set: (tool, $ per call in micro-dollars, may be sent, returns, description).
DEMO_MCP_TOOLS = [
    ("lookup_customer", 1_000, Clearance.CONFIDENTIAL, Clearance.CONFIDENTIAL,
     {"type": "object", "properties": {"customer_id": {"type": "string", "pattern": "^c-[0-9]+$"}},
      "required": ["customer_id"], "additionalProperties": False}),
    ("add_note", 2_000, Clearance.CONFIDENTIAL, Clearance.PUBLIC,
     {"type": "object", "properties": {"customer_id": {"type": "string", "pattern": "^c-[0-9]+$"},
                                       "note": {"type": "string", "maxLength": 2000}},
      "required": ["customer_id", "note"], "additionalProperties": False}),
    ("export_customers", 50_000, Clearance.CONFIDENTIAL, Clearance.CONFIDENTIAL,
     {"type": "object", "properties": {}, "additionalProperties": False}),
]
# An agent that runs elsewhere and reaches the CRM through the MCP gateway (and models through the OpenAI one).
DEMO_MCP_AGENT = ("crm-assistant", "support", ["integrator"], "Answers account questions from the CRM; runs "
                  "outside Warden and reaches the CRM through Warden's MCP gateway.",
                  ["gpt-4o-mini"], ["crm/lookup_customer", "crm/add_note", "crm/export_customers"],
                  Clearance.CONFIDENTIAL, "")
DEMO_MCP_POLICIES = [
    ("crm-notes-need-security", "Notes written into customer records are approved by security.",
     '@escalate("security")\nforbid(principal, action == Action::"tool.call", resource == Tool::"crm/add_note");'),
    ("no-bulk-exports", "No agent exports the whole customer base.",
     'forbid(principal, action == Action::"tool.call", resource == Tool::"crm/export_customers");'),
]
# A small agent budget: the invoice reader runs out of money in its first runs (a run stopped by a budget).
AGENT_BUDGETS = [("invoice-reader", 50_000, "deny")]
# Policies of the demo besides the starter templates.
DEMO_POLICIES = [
    ("support-uses-small-models", "The support team keeps to small models.",
     'forbid(principal in Team::"support", action == Action::"llm.call", resource == Model::"claude-sonnet");'),
]
# (agent, objective, every so many seconds): beat starts these while WARDEN_DEMO_TRAFFIC is on.
SCHEDULES = [
    ("paper-scout", "Find and summarise new work on retrieval-augmented generation evaluation", 90),
    ("lab-orchestrator", "Plan next week's reading list on tool-use benchmarks", 150),
    ("lab-orchestrator", "Plan and write the quarterly literature review on agent safety", 600),
    ("ticket-triage", "URGENT: customer cannot log in after a password reset and is locked out", 75),
    ("ticket-triage", "Question about adding a VAT number to past invoices", 120),
    ("refund-helper", "Refund a double charge on the annual plan for the Berlin office", 180),
    ("invoice-reader", "Supplier invoices of the week", 120),
    ("onboarding-lead", "This week's new customers", 240),
]


def _demo_mcp(owner) -> list[str]:
    """The demo CRM behind the MCP gateway: the server, its priced tools, an agent and two policies."""
    from .gateway.registry import mcp_server_register
    from .models import McpServer

    created = []
    if not McpServer.objects.filter(name="crm").exists():
        mcp_server_register(by=owner, name="crm", url=settings.WARDEN_DEMO_MCP_URL, timeout_seconds=10,
                            description="The company's customer records (the demo's CRM, an MCP server).",
                            tools=[{"name": name, "price_micros": price, "clearance": clearance, "returns": returns,
                                    "input_schema": schema} for name, price, clearance, returns, schema in DEMO_MCP_TOOLS])
    for name, description, body in DEMO_MCP_POLICIES:
        if not Policy.objects.filter(name=name).exists():
            policy_create(name=name, body=body, description=description, by=owner, reason="demo policy")
    name, team, roles, description, models, tools, clearance, program = DEMO_MCP_AGENT
    if not Agent.objects.filter(name=name).exists():
        services.agent_register(name=name, owner=owner, team=Team.objects.get(name=team), by=owner, roles=roles,
                                description=description, allowed_models=models, allowed_tools=tools,
                                clearance=clearance, program=program)
        created.append(name)
    return created


@transaction.atomic
def demo_fleet_ensure(*, owner_username: str = "admin") -> list[str]:
    owner = get_user_model().objects.get(username=owner_username)
    for name, display in TEAMS.items():
        Team.objects.get_or_create(name=name, defaults={"display_name": display})
    for name, (description, scopes) in ROLES.items():
        role, made = Role.objects.get_or_create(name=name, defaults={"description": description, "scopes": scopes})
        if not made and not set(scopes) <= set(role.scopes):  # a demo database from before: the demo's scopes
            role.scopes = sorted(set(role.scopes) | set(scopes))
            role.save(update_fields=["scopes"])
    for name in ("baseline-permit", "expensive-calls-need-finance", "confidential-data-needs-clearance",
                 "no-deep-delegation", "business-hours-only"):
        if not Policy.objects.filter(name=name).exists():
            description, body = TEMPLATES[name]
            policy_create(name=name, body=body, description=description, by=owner, reason="demo starter policy")
    for name, description, body in DEMO_POLICIES:
        if not Policy.objects.filter(name=name).exists():
            policy_create(name=name, body=body, description=description, by=owner, reason="demo policy")
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

    from governance.models import DataSink
    from governance.services import data_view_update

    for name, classification, team_name, description in DATA_VIEWS:
        view = DataView.objects.filter(name=name).first()
        if view is None:
            data_view_create(name=name, classification=classification, team=Team.objects.get(name=team_name),
                             description=description, by=owner, **DATA_VIEW_SOURCES.get(name, {}))
        elif name in DATA_VIEW_SOURCES and not view.source:  # a demo database from before views served data
            data_view_update(view=view, by=owner, **DATA_VIEW_SOURCES[name])
    for kind, name, clearance, note in DATA_SINKS:
        DataSink.objects.get_or_create(kind=kind, name=name, defaults={"clearance": clearance, "note": note,
                                                                       "updated_by": owner})
    created = []
    for name, team, roles, description, models, tools, clearance, program in FLEET:
        existing = Agent.objects.filter(name=name).first()
        if existing is not None:
            if not existing.program and existing.status != "retired":  # a demo database from before the runtime
                services.agent_update(agent=existing, by=owner, program=program, allowed_models=models,
                                      allowed_tools=tools)
            continue
        services.agent_register(
            name=name, owner=owner, team=Team.objects.get(name=team), by=owner, roles=roles,
            description=description, allowed_models=models, allowed_tools=tools, clearance=clearance,
            program=program,
        )
        created.append(name)
    for agent_name, limit, on_exceed in AGENT_BUDGETS:
        agent = Agent.objects.get(name=agent_name)
        if not Budget.objects.filter(scope="agent", agent=agent).exists():
            budget_create(scope="agent", agent=agent, monthly_limit_micros=limit, on_exceed=on_exceed, by=owner)
    if settings.WARDEN_DEMO_MCP_URL:
        created += _demo_mcp(owner)
    from .models import RunSchedule
    from .runtime.services import schedule_create

    from django.utils import timezone

    for number, (agent_name, objective, every) in enumerate(SCHEDULES):
        agent = Agent.objects.get(name=agent_name)
        if not RunSchedule.objects.filter(agent=agent, objective=objective).exists():
            first = timezone.now() + dt.timedelta(seconds=6 * number)  # staggered: the console fills in order
            schedule_create(agent=agent, objective=objective, interval_seconds=max(60, every), by=owner, demo=True,
                            first_run_at=first)
    return created
