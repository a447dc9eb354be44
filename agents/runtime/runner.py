"""Advancing a run: what one Celery task does (agents.tasks.run_advance_task).

    run_advance(run_id) -> "finished" | "waiting" | "again" | "stopped" | "busy" | "gone"

One worker at a time works on a run: it holds a PostgreSQL advisory lock on
the run for as long as it works on it. The lock belongs to the worker's
database session, so a worker that dies (SIGKILL, a lost host) lets go of it
the moment its connection drops: the run's next delivery (Celery hands back
the task of a dead worker process; the recovery sweep re-sends what was lost
with Redis) takes it up at once and resumes it from its step ledger.

Deliveries are safe to repeat: a second delivery while the first still works
finds the lock taken ("busy"); one for a finished run does nothing ("gone").
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit.services import audit_record
from governance.context import correlation_scope
from governance.models import ActionOutcome

from ..models import RUN_FINAL, AgentRun, Clearance, RunStatus, RunStep, StepStatus
from .context import Context, _bounded, clean_value, summary
from .errors import Abort, HandOn, Infrastructure, StepProblem, Stopped, WaitForApproval, WaitForChild
from .live import run_changed_on_commit
from .programs import program_load

logger = logging.getLogger(__name__)

RUN_LOCK_CLASS = 0x5752  # advisory locks (class, object): this class is runs
MAX_DELIVERIES = 50  # a run taken up this often without finishing is failed, not retried for ever


def lock_key(run_id) -> int:
    return int.from_bytes(uuid.UUID(str(run_id)).bytes[:4], "big", signed=True)


@contextmanager
def run_lock(run_id):
    """True while this session holds the run (the lock is released on exit, or when the session dies)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [RUN_LOCK_CLASS, lock_key(run_id)])
        held = cursor.fetchone()[0]
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [RUN_LOCK_CLASS, lock_key(run_id)])


def run_is_held(run_id) -> bool:
    """Whether some worker is working on the run right now (its lock is taken)."""
    with run_lock(run_id) as held:
        return not held


def run_advance(run_id) -> str:
    """One turn of a run on a worker (a span of its own, in the trace of the request that started the run)."""
    from governance.telemetry import tracer

    with tracer.start_as_current_span("run.advance") as span:
        span.set_attribute("warden.run_id", str(run_id))
        return _advance(run_id)


def _advance(run_id) -> str:
    with run_lock(run_id) as held:
        if not held:
            return "busy"
        run = AgentRun.objects.select_related("agent__team", "agent__owner").filter(pk=run_id).first()
        if run is None or run.status in RUN_FINAL:
            return "gone"
        if run.status == RunStatus.WAITING_APPROVAL and _still_waiting(run):
            return "waiting"
        now = timezone.now()
        taken = AgentRun.objects.filter(pk=run.pk, status__in=[RunStatus.QUEUED, RunStatus.RUNNING,
                                                               RunStatus.WAITING_APPROVAL]).update(
            status=RunStatus.RUNNING, started_at=Coalesce(F("started_at"), now), heartbeat_at=now,
            deliveries=F("deliveries") + 1)
        if not taken:
            return "gone"
        run.refresh_from_db(fields=["status", "deliveries", "started_at"])
        with correlation_scope(run.correlation_id):
            if run.status != RunStatus.RUNNING:
                return "gone"
            run_changed_on_commit(run.pk, status=run.status)
            if run.deliveries > MAX_DELIVERIES:
                return _finish(run, RunStatus.FAILED, error=f"the run was taken up {MAX_DELIVERIES} times without "
                                                             "finishing; stopped")
            return _execute(run)


def _still_waiting(run: AgentRun) -> bool:
    step = RunStep.objects.filter(run=run, status=StepStatus.WAITING_APPROVAL).select_related("action").first()
    return step is not None and step.action is not None and step.action.outcome == ActionOutcome.PENDING_APPROVAL


def _execute(run: AgentRun) -> str:
    try:
        program = program_load(run.program)
    except ValidationError as error:
        return _finish(run, RunStatus.FAILED, error=" ".join(error.messages))
    steps = {step.index: step for step in RunStep.objects.filter(run=run).order_by("index")}
    ctx = Context(run=run, steps=steps)
    try:
        result = program(ctx, run.objective)
        ctx.raise_signal()  # a signal the program swallowed (a bare `except:`) still decides
    except WaitForApproval:
        AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(status=RunStatus.WAITING_APPROVAL,
                                                                           heartbeat_at=timezone.now())
        run_changed_on_commit(run.pk, status=RunStatus.WAITING_APPROVAL)
        # Decided while this task was finishing? Its resume message found the run busy: go on now.
        run.status = RunStatus.WAITING_APPROVAL
        return "waiting" if _still_waiting(run) else "again"
    except WaitForChild:
        # The run stays `running` and holds no worker; the child's end sends it on (and the recovery sweep
        # leaves a run alone while a child of it is active).
        AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
        return "waiting"
    except Stopped:
        return "stopped"
    except HandOn:
        return "again"
    except Abort as abort:
        return _finish(run, RunStatus.FAILED, error=abort.message)
    except Infrastructure as trouble:
        raise trouble.error
    except StepProblem as problem:
        where = f"step {problem.step}: " if problem.step is not None else ""
        return _finish(run, RunStatus.FAILED, error=f"{where}{problem.message}")
    except Exception as error:  # the program's own mistake: the run fails and says what it was
        logger.exception("program %s failed in run %s", run.program, run.pk)
        return _finish(run, RunStatus.FAILED, error=f"the program raised {type(error).__name__}: {summary(str(error), 1000)}")
    return _finish(run, RunStatus.SUCCEEDED, result=_bounded(clean_value(result)))


def _count_end(run: AgentRun, status: str, now) -> None:
    from django.db import transaction

    from governance.metrics import RUN_SECONDS, RUNS_ENDED, safely

    seconds = max(0.0, (now - (run.started_at or run.created_at)).total_seconds())

    def counted():
        RUNS_ENDED.labels(status).inc()
        RUN_SECONDS.labels(status).observe(seconds)

    transaction.on_commit(lambda: safely(counted))


@transaction.atomic
def _finish(run: AgentRun, status: str, *, result=None, error: str = "") -> str:
    now = timezone.now()
    error = clean_value(error[:4000])  # a program's words: no NUL, no lone surrogate
    finished = AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=status, result=result, error=error, finished_at=now, heartbeat_at=now)
    if not finished:
        return "stopped"  # cancelled meanwhile: the cancellation is what is recorded
    run.refresh_from_db(fields=["cost_micros", "steps_done", "label", "parent", "delegation"])
    run.status = status
    chain = []
    if run.delegation_id is not None:
        from agents.selectors import delegation_state

        chain = delegation_state(run.delegation, at=now).chain
    audit_record(action=f"run.{'succeed' if status == RunStatus.SUCCEEDED else 'fail'}", actor=run.agent,
                 agent=run.agent, resource=f"run:{run.pk}", outcome=status, cost_micros=run.cost_micros,
                 reasons=[error[:1000]] if error else [], delegation_chain=chain,
                 data_classification=Clearance(run.label).label if run.label else "",
                 payload={"run_id": str(run.pk), "program": run.program, "steps": run.steps_done,
                          "result": summary(result, 500) if result is not None else ""})
    run_changed_on_commit(run.pk, status=status)
    _count_end(run, status, now)
    if run.parent_id is not None:
        from .services import child_ended

        child_ended(run)
    return "finished"
