"""Reads of the runtime, restricted by the one permission funnel."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from governance.access import can

from ..models import AgentRun, RunSchedule, RunStep


def run_list(*, user) -> QuerySet[AgentRun]:
    if not can(user, "run.view"):
        raise PermissionDenied("run.view")
    return AgentRun.objects.select_related("agent__team", "started_by", "schedule", "parent__agent", "delegation")


def run_get(*, user, run_id) -> AgentRun:
    try:
        return run_list(user=user).get(pk=run_id)
    except (AgentRun.DoesNotExist, ValueError):
        raise Http404("No such run.") from None


def run_steps(*, run: AgentRun) -> list[RunStep]:
    return list(RunStep.objects.filter(run=run).select_related("action").order_by("index"))


def schedules_of(*, user, agent) -> QuerySet[RunSchedule]:
    if not can(user, "run.view"):
        raise PermissionDenied("run.view")
    return RunSchedule.objects.filter(agent=agent).order_by("id")


def schedule_get(*, user, schedule_id) -> RunSchedule:
    if not can(user, "run.view"):
        raise PermissionDenied("run.view")
    try:
        return RunSchedule.objects.select_related("agent").get(pk=schedule_id)
    except (RunSchedule.DoesNotExist, ValueError):
        raise Http404("No such schedule.") from None
