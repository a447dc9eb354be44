"""Registry pages: thin views over selectors, services and one filter form."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers

from audit.selectors import events_for_agent
from billing.selectors import covering_lines
from billing.services import period_start
from governance import approvals
from governance.access import can, require
from governance.exceptions import Conflict, NotAllowed
from governance.forms import GrantForm, apply_errors
from governance.models import Approval, ApprovalKind, ApprovalStatus

from . import selectors, services
from .filters import AgentFilter
from .forms import AgentEditForm, AgentForm, BudgetIncreaseForm, DelegationForm, KeyForm, ReasonForm, TeamForm
from .models import AgentStatus


@require("agent.view")
@vary_on_headers("HX-Request")
def agent_list(request):
    filters = AgentFilter(request.GET or None)
    agents = selectors.agent_list(user=request.user)
    if filters.is_valid():
        agents = filters.filter(agents)
    template = "agents/agent_list.html#rows" if request.htmx else "agents/agent_list.html"
    return render(request, template, {
        "filters": filters,
        "agents": agents.order_by("name")[:500],
        "statuses": AgentStatus.choices,
        "teams": selectors.teams(),
        "can_manage": can(request.user, "agent.manage"),
    })


def _detail(request, agent, *, status=200, **extra):
    context = {
        "agent": agent,
        "keys": selectors.agent_keys(agent=agent),
        "delegations": selectors.agent_delegations(agent=agent),
        "events": events_for_agent(user=request.user, agent_id=agent.pk, limit=20),
        **_budget_context(request.user, agent),
        "can_read_audit": can(request.user, "audit.view"),
        "actions": selectors.agent_actions(agent=agent, limit=25),
        "grants": selectors.agent_grants(agent=agent),
        "grant_form": GrantForm(),
        "can_manage": can(request.user, "agent.manage"),
        "can_suspend": can(request.user, "agent.suspend"),
        "key_form": KeyForm(),
        "reason_form": ReasonForm(),
        "delegation_form": DelegationForm(),
        "now": timezone.now(),
        **_run_context(request.user, agent),
    }
    context.update(extra)
    return render(request, "agents/agent_detail.html", context, status=status)


def _run_context(user, agent) -> dict:
    """Its runs and schedules, and the forms to start one (for those who may)."""
    from .forms import RunStartForm, ScheduleForm
    from .runtime.selectors import run_list, schedules_of

    if not can(user, "run.view"):
        return {}
    return {"show_runs": True, "runs": list(run_list(user=user).filter(agent=agent).order_by("-created_at")[:10]),
            "schedules": list(schedules_of(user=user, agent=agent)),
            "can_run": can(user, "run.manage") and bool(agent.program) and agent.status == AgentStatus.ACTIVE,
            "can_schedule": can(user, "run.manage") and bool(agent.program),
            "run_form": RunStartForm(), "schedule_form": ScheduleForm()}


def _budget_context(user, agent) -> dict:
    """The budgets covering the agent (for those who may see budgets, and its owner) and the owner's requests."""
    is_owner = agent.owner_id == user.pk
    if not (is_owner or can(user, "budget.view")):
        return {"budgets": [], "is_owner": is_owner}
    budgets = covering_lines(agent=agent, month=period_start())
    requests = Approval.objects.filter(kind=ApprovalKind.BUDGET_INCREASE, status=ApprovalStatus.PENDING,
                                       budget__in=[line.budget.pk for line in budgets]).select_related("budget")
    return {"budgets": budgets, "is_owner": is_owner, "budget_requests": list(requests),
            "increase_form": BudgetIncreaseForm()}


@require("agent.view")
def agent_detail(request, agent_id):
    return _detail(request, selectors.agent_get(user=request.user, agent_id=agent_id))


@require("agent.manage")
def agent_register(request):
    form = AgentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        data["roles"] = [role.name for role in data["roles"]]
        try:
            agent = services.agent_register(by=request.user, **data)
        except ValidationError as error:
            apply_errors(form, error)
        else:
            messages.success(request, f"Agent {agent.name} registered. Issue it a key to let it call the API.")
            return redirect("agents:detail", agent_id=agent.pk)
    return render(request, "agents/agent_form.html", {"form": form, "title": "Register an agent"},
                  status=400 if form.errors else 200)


@require("agent.manage")
def agent_edit(request, agent_id):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    initial = {
        "description": agent.description, "owner": agent.owner, "team": agent.team,
        "allowed_models": ", ".join(agent.allowed_models), "allowed_tools": ", ".join(agent.allowed_tools),
        "clearance": agent.clearance, "program": agent.program,
    }
    form = AgentEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.agent_update(agent=agent, by=request.user, **form.cleaned_data)
        except ValidationError as error:
            apply_errors(form, error)
        except Conflict as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, "Changes saved.")
            return redirect("agents:detail", agent_id=agent.pk)
    return render(request, "agents/agent_form.html", {"form": form, "agent": agent, "title": f"Edit {agent.name}"},
                  status=400 if form.errors else 200)


LIFECYCLE = {
    "suspend": ("agent.suspend", services.agent_suspend, True, "suspended"),
    "resume": ("agent.manage", services.agent_resume, True, "resumed"),
    "retire": ("agent.manage", services.agent_retire, True, "retired"),
    "activate": ("agent.manage", services.agent_activate, False, "activated"),
}


def agent_lifecycle(request, agent_id, verb):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    capability, service, takes_reason, done = LIFECYCLE[verb]
    return require(capability)(_lifecycle)(request, agent_id, service, takes_reason, done)


def _lifecycle(request, agent_id, service, takes_reason, done):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    form = ReasonForm(request.POST)
    form.is_valid()
    kwargs = {"reason": form.cleaned_data.get("reason", "")} if takes_reason else {}
    try:
        service(agent=agent, by=request.user, **kwargs)
    except ValidationError as error:
        return _detail(request, agent, status=400, action_error=" ".join(error.messages), open_dialog=request.POST.get("dialog"))
    except Conflict as error:
        return _detail(request, agent, status=409, action_error=error.message)
    messages.success(request, f"Agent {agent.name} {done}.")
    return redirect("agents:detail", agent_id=agent.pk)


@require("agent.manage")
@require_POST
def key_issue(request, agent_id):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    form = KeyForm(request.POST)
    if not form.is_valid():
        return _detail(request, agent, status=400, key_form=form)
    try:
        key, secret = services.agent_key_issue(
            agent=agent, by=request.user, name=form.cleaned_data["name"], expires_at=form.expires_at()
        )
    except Conflict as error:
        return _detail(request, agent, status=409, action_error=error.message)
    return _show_secret(request, agent, key, secret)


def _show_secret(request, agent, key, secret):
    """Rendered, not redirected: the secret is never stored, not even in the session."""
    response = _detail(request, agent, new_key=key, new_secret=secret)
    response["Cache-Control"] = "no-store"
    return response


@require("agent.manage")
@require_POST
def key_revoke(request, agent_id, key_id):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    key = selectors.agent_key_get(agent=agent, key_id=key_id)
    services.agent_key_revoke(key=key, by=request.user, reason=request.POST.get("reason", "")[:200])
    messages.success(request, f"Key {key.display_prefix} revoked; it no longer works.")
    return redirect("agents:detail", agent_id=agent.pk)


@require("agent.manage")
@require_POST
def key_rotate(request, agent_id, key_id):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    key = selectors.agent_key_get(agent=agent, key_id=key_id)
    try:
        new_key, secret = services.agent_key_rotate(key=key, by=request.user)
    except Conflict as error:
        return _detail(request, agent, status=409, action_error=error.message)
    return _show_secret(request, agent, new_key, secret)


@require("agent.manage")
@require_POST
def delegation_create(request, agent_id):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    form = DelegationForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            services.delegation_create(
                delegate=agent, by_user=request.user, scopes=data["scopes"], max_depth=data["max_depth"],
                expires_at=timezone.now() + dt.timedelta(hours=data["expires_in_hours"]), purpose=data["purpose"],
            )
        except ValidationError as error:
            apply_errors(form, error)
        except Conflict as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, f"Scopes delegated to {agent.name}.")
            return redirect("agents:detail", agent_id=agent.pk)
    return _detail(request, agent, status=400, delegation_form=form, open_dialog="delegate")


@require("agent.manage")
@require_POST
def delegation_revoke(request, delegation_id):
    delegation = selectors.delegation_get(user=request.user, delegation_id=delegation_id)
    services.delegation_revoke(delegation=delegation, by=request.user, reason=request.POST.get("reason", ""))
    messages.success(request, "Delegation revoked; every hop below it is invalid too.")
    return redirect("agents:detail", agent_id=delegation.delegate_id)


@require("agent.view")
def team_list(request):
    form = TeamForm(request.POST or None)
    if request.method == "POST":
        if not can(request.user, "agent.manage"):
            raise PermissionDenied("agent.manage")
        if form.is_valid():
            try:
                team = services.team_create(by=request.user, **form.cleaned_data)
            except ValidationError as error:
                apply_errors(form, error)
            else:
                messages.success(request, f"Team {team.name} created.")
                return redirect("agents:teams")
    return render(request, "agents/team_list.html", {
        "teams": selectors.teams(), "form": form, "can_manage": can(request.user, "agent.manage"),
    }, status=400 if form.errors else 200)


@require("agent.view")
@require_POST
def budget_increase_request(request, agent_id):
    """The agent's owner asks finance for a higher limit on a budget that covers it."""
    from billing.models import Budget

    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    form = BudgetIncreaseForm(request.POST)
    budget = Budget.objects.select_related("team", "agent").filter(pk=form.data.get("budget") or 0).first() \
        if str(form.data.get("budget", "")).isdigit() else None
    if not form.is_valid():
        return _detail(request, agent, status=400, increase_form=form, open_dialog="increase", increase_budget=budget)
    try:
        if budget is None:
            raise ValidationError({"budget": "No such budget."})
        approvals.budget_increase_request(budget=budget, requested_limit_micros=form.cleaned_data["monthly_limit"],
                                          reason=form.cleaned_data["reason"], by_user=request.user)
    except ValidationError as error:
        apply_errors(form, error)
        return _detail(request, agent, status=400, increase_form=form, open_dialog="increase", increase_budget=budget)
    except (NotAllowed, Conflict) as error:
        return _detail(request, agent, status=403 if isinstance(error, NotAllowed) else 409, action_error=error.message)
    messages.success(request, f"Asked finance to raise {budget.label}; the request is in their approval queue.")
    return redirect("agents:detail", agent_id=agent.pk)
