"""Pages of runs: the list, a run watched live step by step, starting and cancelling, schedules."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers

from governance.access import can, require
from governance.exceptions import Conflict
from governance.forms import apply_errors

from . import selectors
from .filters import RunFilter
from .forms import RunStartForm, ScheduleForm
from .models import RunSource, RunStatus
from .runtime import selectors as run_selectors
from .runtime import services as run_services

PAGE = 100


@require("run.view")
@vary_on_headers("HX-Request")
def run_list(request):
    filters = RunFilter(request.GET or None)
    runs = run_selectors.run_list(user=request.user)
    if filters.is_bound and not filters.is_valid():
        return render(request, "agents/run_list.html", {"filters": filters, "runs": [], "query": ""}, status=400)
    if filters.is_bound:
        runs = filters.filter(runs)
    context = {"filters": filters, "runs": runs.order_by("-created_at")[:PAGE], "page": PAGE,
               "query": request.GET.urlencode(), "statuses": RunStatus.choices, "sources": RunSource.choices}
    template = "agents/run_list.html#rows" if request.htmx else "agents/run_list.html"
    return render(request, template, context)


def _run_context(request, run) -> dict:
    from governance.selectors import approval_list

    steps = run_selectors.run_steps(run=run)
    waiting = next((step for step in steps if step.status == "waiting_approval"), None)
    approval_id = None
    if waiting is not None and waiting.action_id and can(request.user, "approval.view"):
        approval_id = approval_list(user=request.user).filter(action_id=waiting.action_id).values_list(
            "pk", flat=True).first()
    return {"run": run, "run_id": str(run.pk), "steps": steps, "can_cancel": can(request.user, "run.cancel") and run.active,
            "can_read_audit": can(request.user, "audit.view"),
            "simulated": any(step.provider == "simulated" for step in steps),
            "waiting": waiting, "waiting_approval_id": approval_id}


@require("run.view")
@vary_on_headers("HX-Request")
def run_detail(request, run_id):
    run = run_selectors.run_get(user=request.user, run_id=run_id)
    template = "agents/run_detail.html#live" if request.htmx and request.GET.get("part") == "live" \
        else "agents/run_detail.html"
    return render(request, template, _run_context(request, run))


@require("run.manage")
@require_POST
def run_start(request, agent_id):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    form = RunStartForm(request.POST)
    if form.is_valid():
        try:
            run = run_services.run_start(agent=agent, objective=form.cleaned_data["objective"], by=request.user,
                                         source=RunSource.BROWSER)
        except ValidationError as error:
            apply_errors(form, error)
        except Conflict as error:
            form.add_error(None, error.message)
        else:
            return redirect("runs:detail", run_id=run.pk)
    from .views import _detail

    return _detail(request, agent, status=400, run_form=form, run_dialog_open=True)


@require("run.cancel")
@require_POST
def run_cancel(request, run_id):
    run = run_selectors.run_get(user=request.user, run_id=run_id)
    try:
        run_services.run_cancel(run=run, by=request.user, reason=request.POST.get("reason", ""))
    except Conflict as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "Run cancelled: it stops at its next step.")
    return redirect("runs:detail", run_id=run.pk)


@require("run.manage")
@require_POST
def schedule_create(request, agent_id):
    agent = selectors.agent_get(user=request.user, agent_id=agent_id)
    form = ScheduleForm(request.POST)
    if form.is_valid():
        try:
            run_services.schedule_create(agent=agent, objective=form.cleaned_data["objective"],
                                         interval_seconds=form.cleaned_data["every_minutes"] * 60, by=request.user)
        except ValidationError as error:
            apply_errors(form, error)
        else:
            messages.success(request, "Schedule added: the first run starts within a minute.")
            return redirect("agents:detail", agent_id=agent.pk)
    from .views import _detail

    return _detail(request, agent, status=400, schedule_form=form, schedule_dialog_open=True)


@require("run.manage")
@require_POST
def schedule_toggle(request, schedule_id):
    schedule = run_selectors.schedule_get(user=request.user, schedule_id=schedule_id)
    run_services.schedule_set_enabled(schedule=schedule, enabled=not schedule.enabled, by=request.user)
    return redirect("agents:detail", agent_id=schedule.agent_id)
