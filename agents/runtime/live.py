"""Live pages of runs: after a run or one of its steps changes, the pages watching it fetch it again.

The message says only *which* run changed; the pages read it over HTTP with
the viewer's own permissions (agents/views.py), so nothing is rendered for
anyone who may not see it, and a page that missed messages catches up on
its next fetch.
"""

from __future__ import annotations

from governance.push import push_on_commit

RUNS_GROUP = "runs"


def run_group(run_id) -> str:
    return f"run.{run_id}"


def run_changed_on_commit(run_id, *, step: int | None = None, status: str | None = None) -> None:
    message = {"type": "run.changed", "id": str(run_id), "step": step, "status": status}
    push_on_commit(run_group(run_id), message)
    push_on_commit(RUNS_GROUP, message)  # the list shows status, steps and cost so far
