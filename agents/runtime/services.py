"""Writes of the runtime: starting, cancelling, resuming, recovering and scheduling runs."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from governance.context import correlation_scope, get_correlation_id, new_correlation_id
from governance.exceptions import Conflict
from governance.gate import RUNTIME_KEY_PREFIX
from governance.models import Action
from governance.payloads import text_problem

from ..models import (RUN_ACTIVE, Agent, AgentRun, AgentStatus, Clearance, RunSchedule, RunSource, RunStatus, RunStep,
                      StepStatus)
from .live import run_changed_on_commit
from .programs import program_load

logger = logging.getLogger(__name__)

MAX_OBJECTIVE = 4000


def run_enqueue_on_commit(run_id) -> None:
    """Send the run to a worker once this transaction commits. If Redis cannot take it, the recovery sweep
    sends it later: robust, so a broker outage never fails the request that started or resumed a run."""
    from agents.tasks import run_advance_task

    transaction.on_commit(lambda: run_advance_task.delay(str(run_id)), robust=True)


def _objective(objective) -> str:
    if not isinstance(objective, str) or not objective.strip():
        raise ValidationError({"objective": "Say what the run should achieve."})
    objective = objective.strip()
    if len(objective) > MAX_OBJECTIVE:
        raise ValidationError({"objective": f"At most {MAX_OBJECTIVE} characters."})
    if text_problem(objective):
        raise ValidationError({"objective": "Text without NUL characters."})
    return objective


@transaction.atomic
def run_start(*, agent: Agent, objective: str, by=None, source: str = RunSource.API,
              schedule: RunSchedule | None = None) -> AgentRun:
    """Queue a run of the agent's program; a worker takes it up once this commits."""
    objective = _objective(objective)
    agent = Agent.objects.select_related("team").get(pk=agent.pk)
    if not agent.program:
        raise ValidationError({"agent": f"{agent.name} has no program: it runs elsewhere and asks the gate over "
                                        "the API. Give it a program to run it here."})
    program_load(agent.program)  # still on the allow-list
    if agent.status != AgentStatus.ACTIVE:
        raise Conflict(f"{agent.name} is {agent.status}: only an active agent can run.", code="agent_not_active")
    # Each run is its own trace: its start, every step and its end share one correlation id of their own
    # (a beat tick that starts several runs must not weave them into one).
    requested_in = get_correlation_id() or ""
    run = AgentRun.objects.create(agent=agent, program=agent.program, objective=objective, source=source,
                                  started_by=by, schedule=schedule, correlation_id=new_correlation_id())
    with correlation_scope(run.correlation_id):
        audit_record(action="run.start", actor=by, agent=agent, resource=f"run:{run.pk}", outcome="queued",
                     payload={"run_id": str(run.pk), "program": agent.program, "source": source,
                              "objective": objective[:500], "schedule_id": schedule.pk if schedule else None,
                              "requested_in": requested_in})
    run_enqueue_on_commit(run.pk)
    run_changed_on_commit(run.pk, status=run.status)
    return run


CHILD_DELEGATION_HOURS = 24


def run_chain(run: AgentRun) -> list:
    """The delegation chain a (child) run acts under, for its audit events; [] for a run of its own."""
    if run.delegation_id is None:
        return []
    from agents.models import Delegation
    from agents.selectors import delegation_state

    return delegation_state(Delegation.objects.get(pk=run.delegation_id), at=timezone.now()).chain


def child_run_start(*, parent: AgentRun, step: RunStep, agent_name: str, objective: str, scopes: list,
                    flow) -> AgentRun | None:
    """A parent run's ctx.delegate, once the gate allowed it: the delegation (scopes narrowed from the
    parent's; a hop below the parent's own delegation, if it acts under one) and the child run under it, in
    the parent's trace, starting with the parent's label. Linked to the parent's step in the same
    transaction, so a repeated delivery never starts a second child."""
    from agents.models import Delegation
    from agents.selectors import delegation_state
    from agents.services import delegation_create

    child_agent = Agent.objects.select_related("team").filter(name=agent_name).first()
    if child_agent is None:
        raise ValidationError({"agent": f"No agent named {agent_name!r}."})
    if not child_agent.program:
        raise ValidationError({"agent": f"{agent_name} has no program: Warden's workers cannot run it."})
    program_load(child_agent.program)
    if child_agent.status != AgentStatus.ACTIVE:
        raise Conflict(f"{agent_name} is {child_agent.status}: only an active agent can run.", code="agent_not_active")
    objective = _objective(objective)
    with transaction.atomic():
        # The parent's row first (the order a cancellation takes): a parent cancelled since the gate allowed
        # this starts no child.
        if not AgentRun.objects.select_for_update(no_key=True).filter(pk=parent.pk, status=RunStatus.RUNNING).exists():
            return None
        locked = RunStep.objects.select_for_update().get(pk=step.pk)
        if locked.child_id is not None:
            return AgentRun.objects.get(pk=locked.child_id)
        if locked.status != StepStatus.RUNNING:
            return None
        parent_hop = Delegation.objects.get(pk=parent.delegation_id) if parent.delegation_id else None
        expires = timezone.now() + dt.timedelta(hours=CHILD_DELEGATION_HOURS)
        if parent_hop is not None:
            expires = min(expires, parent_hop.expires_at)
        delegation = delegation_create(delegate=child_agent, by_agent=parent.agent, parent=parent_hop, scopes=scopes,
                                       expires_at=expires, purpose=f"run {parent.pk} step {step.index}")
        child = AgentRun.objects.create(
            agent=child_agent, program=child_agent.program, objective=objective, source=RunSource.DELEGATION,
            started_by=None, parent=parent, parent_step=step.index, delegation=delegation,
            correlation_id=parent.correlation_id, label=flow.classification, label_sources=list(flow.sources))
        chain = delegation_state(delegation, at=timezone.now()).chain
        with correlation_scope(child.correlation_id):
            audit_record(action="run.start", actor=parent.agent, agent=child_agent, resource=f"run:{child.pk}",
                         outcome="queued", delegation_chain=chain,
                         data_classification=Clearance(flow.classification).label if flow.classification else "",
                         payload={"run_id": str(child.pk), "program": child_agent.program, "source": "delegation",
                                  "objective": objective[:500], "parent_run": str(parent.pk),
                                  "parent_step": step.index, "delegation_id": str(delegation.pk),
                                  "scopes": list(delegation.scopes)})
        RunStep.objects.filter(pk=step.pk).update(child=child)
        run_enqueue_on_commit(child.pk)
        run_changed_on_commit(child.pk, status=child.status)
        run_changed_on_commit(parent.pk, step=step.index)
    return child


def child_ended(run: AgentRun) -> None:
    """A child run ended (any way): its delegation is revoked now, and its parent goes on once this commits."""
    if run.parent_id is None:
        return
    from agents.models import Delegation
    from agents.services import delegation_revoke

    if run.delegation_id is not None:
        delegation_revoke(delegation=Delegation.objects.get(pk=run.delegation_id), by=None,
                          reason=f"its run {run.pk} ended ({run.status})")
    run_enqueue_on_commit(run.parent_id)


def _close_steps(runs: list[AgentRun], reason: str) -> list:
    """Mark the open steps of cancelled runs; the Actions they hold or wait on.

    Found by the runtime's idempotency keys (`run:<id>:...`), not only by the steps' links: a gate decision
    that committed a moment ago may not be linked to its step yet."""
    from governance.models import ActionOutcome, ActionStatus

    open_steps = list(RunStep.objects.filter(run_id__in=[run.pk for run in runs],
                                             status__in=[StepStatus.RUNNING, StepStatus.WAITING_APPROVAL]))
    now = timezone.now()
    for step in open_steps:
        step.status, step.error, step.finished_at = StepStatus.CANCELLED, reason[:4000], now
        step.save(update_fields=["status", "error", "finished_at"])
    action_ids = {step.action_id for step in open_steps if step.action_id}
    for run in runs:
        action_ids.update(Action.objects.filter(
            agent_id=run.agent_id, idempotency_key__startswith=f"{RUNTIME_KEY_PREFIX}{run.pk}:",
            status=ActionStatus.DECIDED, outcome__in=[ActionOutcome.ALLOWED, ActionOutcome.PENDING_APPROVAL],
        ).values_list("pk", flat=True))
    return sorted(action_ids, key=str)


def _cancel_runs(runs: list[AgentRun], *, by, reason: str) -> list:
    now = timezone.now()
    cancelled, action_ids = [], []
    for run in runs:
        done = AgentRun.objects.filter(pk=run.pk, status__in=RUN_ACTIVE).update(
            status=RunStatus.CANCELLED, error=reason[:4000], finished_at=now, heartbeat_at=now, cancelled_by=by)
        if not done:
            continue
        cancelled.append(run)
        with correlation_scope(run.correlation_id):  # in the run's own trace
            audit_record(action="run.cancel", actor=by, agent=run.agent, resource=f"run:{run.pk}",
                         outcome="cancelled", reasons=[reason], cost_micros=run.cost_micros,
                         delegation_chain=run_chain(run),
                         payload={"run_id": str(run.pk), "program": run.program})
        run_changed_on_commit(run.pk, status=RunStatus.CANCELLED)
    action_ids = _close_steps(cancelled, reason)
    for run in cancelled:
        child_ended(AgentRun(pk=run.pk, parent_id=run.parent_id, delegation_id=run.delegation_id,
                             status=RunStatus.CANCELLED))
    # What they delegated stops with them: each child in transactions of its own, after this one (one
    # transaction never writes to two agents' audit chains).
    children = list(AgentRun.objects.filter(parent__in=[run.pk for run in cancelled], status__in=RUN_ACTIVE)
                    .order_by("pk").values_list("pk", flat=True))
    return action_ids, children


def _cancel_children(child_ids, *, by, reason: str) -> None:
    for child_id in child_ids:
        try:
            run_cancel(run=AgentRun(pk=child_id), by=by, reason=reason)
        except Conflict:
            pass  # it ended meanwhile


def run_cancel(*, run: AgentRun, by, reason: str = "") -> AgentRun:
    """Stop a run at its next step. What its step in flight holds is released (an Action it was allowed and
    has not completed is cancelled; one waiting for a person is withdrawn); money already spent stays spent.

    Two transactions, as a suspension: the run's status first (its worker sees it at the next step), then
    the approvals and actions, locked in the order the gate and the sweep lock them.
    """
    reason = (reason or "").strip()[:500] or "cancelled"
    with transaction.atomic():
        locked = AgentRun.objects.select_for_update(of=("self",), no_key=True).select_related("agent__team").get(pk=run.pk)
        if locked.status not in RUN_ACTIVE:
            raise Conflict(f"This run is {locked.status} already.", code="run_finished")
        who = by.get_username() if by is not None else "the system"
        action_ids, children = _cancel_runs([locked], by=by, reason=f"cancelled by {who}: {reason}")
    with correlation_scope(locked.correlation_id):
        _release(action_ids, by=by, reason=f"run {locked.pk} was cancelled")
    _cancel_children(children, by=by, reason=f"its parent run {locked.pk} was cancelled")
    return AgentRun.objects.get(pk=run.pk)


def _release(action_ids, *, by, reason: str) -> None:
    """What cancelled runs (a run and the children it delegated to) held or waited for, agent by agent."""
    from governance.approvals import approvals_withdraw
    from governance.gate import actions_cancel

    by_agent: dict = {}
    for action in Action.objects.filter(pk__in=list(action_ids)).select_related("agent"):
        by_agent.setdefault(action.agent_id, (action.agent, []))[1].append(action.pk)
    for agent, ids in by_agent.values():
        approvals_withdraw(agent=agent, reason=reason, action_ids=ids)
        actions_cancel(agent=agent, by=by, reason=reason, action_ids=ids)


def runs_cancel_for_agent(*, agent: Agent, by, reason: str) -> int:
    """The kill switch's part in the runtime: every active run of the agent stops at once (its open actions and
    approvals are cancelled by agent_suspend / agent_retire right after); the runs they delegated to, here."""
    with transaction.atomic():
        runs = list(AgentRun.objects.select_for_update(of=("self",), no_key=True).select_related("agent__team")
                    .filter(agent=agent, status__in=RUN_ACTIVE).order_by("pk"))
        _, children = _cancel_runs(runs, by=by, reason=reason)
    _cancel_children(children, by=by, reason=reason)
    return len(runs)


def runs_resume_on_commit(action_id) -> None:
    """An approval was decided (or withdrawn, or expired): runs waiting on its action go on (approve) or meet
    the denial (deny, expire) as soon as this commits."""

    def resume():
        from agents.tasks import run_advance_task

        for run_id in (RunStep.objects.filter(action_id=action_id, status=StepStatus.WAITING_APPROVAL)
                       .values_list("run_id", flat=True)):
            try:
                run_advance_task.delay(str(run_id))
            except Exception:  # Redis down: the recovery sweep resumes it
                logger.warning("could not send run %s on; the recovery sweep will", run_id, exc_info=True)

    transaction.on_commit(resume, robust=True)


def runs_recover(*, now: dt.datetime | None = None, limit: int = 200) -> int:
    """Beat: send again every run that should be moving and is not (its message was lost with Redis, or its
    worker host died): queued or running, held by no worker, quiet for WARDEN_RUN_STALL_SECONDS; and waiting
    runs whose approval has been decided. Repeats are harmless (runner.py)."""
    from agents.tasks import run_advance_task
    from governance.models import ActionOutcome

    from .runner import run_is_held

    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.WARDEN_RUN_STALL_SECONDS)
    stalled = list(AgentRun.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING], heartbeat_at__lt=cutoff)
                   .exclude(children__status__in=RUN_ACTIVE)  # waiting for a child run: its end sends it on
                   .order_by("heartbeat_at").values_list("pk", flat=True)[:limit])
    decided = list(RunStep.objects.filter(status=StepStatus.WAITING_APPROVAL, run__status=RunStatus.WAITING_APPROVAL)
                   .exclude(action__outcome=ActionOutcome.PENDING_APPROVAL)
                   .values_list("run_id", flat=True)[:limit])
    sent = 0
    for run_id in dict.fromkeys([*stalled, *decided]):
        if run_is_held(run_id):
            continue
        run_advance_task.delay(str(run_id))
        sent += 1
    if sent:
        logger.info("recovery sweep sent %s run(s) on", sent)
    return sent


# --- schedules -----------------------------------------------------------------------------------


def runs_schedule(*, now: dt.datetime | None = None) -> int:
    """Beat: start the runs that are due. Never two of one schedule at once; demo schedules only while
    WARDEN_DEMO_TRAFFIC is on. A schedule whose agent cannot run now waits for its next turn."""
    now = now or timezone.now()
    started = 0
    due = RunSchedule.objects.filter(enabled=True, next_run_at__lte=now)
    if not settings.WARDEN_DEMO_TRAFFIC:
        due = due.filter(demo=False)
    for schedule_id in list(due.order_by("next_run_at").values_list("pk", flat=True)[:100]):
        with transaction.atomic():
            schedule = (RunSchedule.objects.select_for_update(skip_locked=True).select_related("agent")
                        .filter(pk=schedule_id, enabled=True, next_run_at__lte=now).first())
            if schedule is None:
                continue
            schedule.next_run_at = now + dt.timedelta(seconds=schedule.interval_seconds)
            schedule.save(update_fields=["next_run_at"])
            if schedule.runs.filter(status__in=RUN_ACTIVE).exists():
                continue
            try:
                with transaction.atomic():
                    run_start(agent=schedule.agent, objective=schedule.objective, source=RunSource.SCHEDULE,
                              schedule=schedule)
                started += 1
            except (ValidationError, Conflict) as problem:
                logger.info("schedule %s did not start a run: %s", schedule.pk, problem)
    return started


@transaction.atomic
def schedule_create(*, agent: Agent, objective: str, interval_seconds: int, by, demo: bool = False,
                    first_run_at: dt.datetime | None = None) -> RunSchedule:
    objective = _objective(objective)
    if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, int) or not 60 <= interval_seconds <= 31 * 86400:
        raise ValidationError({"interval_seconds": "Between 60 seconds and 31 days."})
    if not agent.program:
        raise ValidationError({"agent": f"{agent.name} has no program to run on a schedule."})
    schedule = RunSchedule.objects.create(agent=agent, objective=objective, interval_seconds=interval_seconds,
                                          demo=demo, created_by=by, next_run_at=first_run_at or timezone.now())
    audit_record(action="run.schedule.create", actor=by, agent=agent, resource=f"schedule:{schedule.pk}",
                 payload={"objective": objective[:500], "interval_seconds": interval_seconds, "demo": demo})
    return schedule


@transaction.atomic
def schedule_set_enabled(*, schedule: RunSchedule, enabled: bool, by) -> RunSchedule:
    schedule = RunSchedule.objects.select_for_update().select_related("agent").get(pk=schedule.pk)
    if schedule.enabled != enabled:
        schedule.enabled = enabled
        if enabled:
            schedule.next_run_at = timezone.now()
        schedule.save(update_fields=["enabled", "next_run_at"])
        audit_record(action=f"run.schedule.{'enable' if enabled else 'disable'}", actor=by, agent=schedule.agent,
                     resource=f"schedule:{schedule.pk}", payload={"objective": schedule.objective[:200]})
    return schedule
