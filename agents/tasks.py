"""Celery tasks of the runtime: thin, ids in, services do the work (agents/runtime/)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)


@shared_task(name="agents.run_advance", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=12)
def run_advance_task(self, run_id: str) -> str:
    """Advance a run until it finishes, waits for a person, or has had its share of this worker."""
    from agents.runtime.runner import run_advance

    try:
        outcome = run_advance(run_id)
    except (OperationalError, InterfaceError) as error:  # the database went away: later, from the ledger
        raise self.retry(exc=error, countdown=min(60, 2 ** self.request.retries))
    if outcome == "again":
        run_advance_task.delay(run_id)
    elif outcome == "busy":
        # another worker holds it (a repeated delivery, or a resume racing the end of a task): look again
        # shortly; if it is still busy after the retries, the holder or the recovery sweep goes on.
        if self.request.retries < 3:
            raise self.retry(countdown=2)
    return outcome


@shared_task(name="agents.runs_recover")
def runs_recover_task() -> int:
    from agents.runtime.services import runs_recover

    return runs_recover()


@shared_task(name="agents.runs_schedule")
def runs_schedule_task() -> int:
    from agents.runtime.services import runs_schedule

    return runs_schedule()
