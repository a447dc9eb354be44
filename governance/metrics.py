"""Prometheus metrics (`/metrics`, text format), with prometheus_client.

Counters and histograms are kept by every process that does the work (web processes, Celery workers and
their pool children). With PROMETHEUS_MULTIPROC_DIR set (devstack and docker-compose set it, before the
process starts), each process writes its own files there, named by host and pid, and a scrape of any web
process adds them all up. Without it, a process reports only itself.

What is a state rather than an event (pending approvals and the oldest one's age, runs in progress, budget
use, the audit chain's age since its last checkpoint) is read from PostgreSQL at scrape time, once, by the
process that answers the scrape: it is the same whichever process answers.

Counted after the fact, never in the gate's transaction: a decision that rolled back was not made.
"""

from __future__ import annotations

import os

import socket

from prometheus_client import values

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each process's files are named by host and pid (not pid alone): containers sharing the directory each
    # count their pids from 1. Set before any metric below is made.
    values.ValueClass = values.MultiProcessValue(
        process_identifier=lambda: f"{socket.gethostname().replace('_', '-')}-{os.getpid()}")

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

GATE_DECISIONS = Counter("warden_gate_decisions", "Gate decisions, by action and outcome.", ["action", "outcome"])
GATE_SECONDS = Histogram("warden_gate_seconds", "Time to judge one request (in the gate's transaction).",
                         ["action"], buckets=FAST)
GATE_STAGE_SECONDS = Histogram("warden_gate_stage_seconds", "Time of each step of a decision: identity (who, "
                               "scopes, delegation), policy (Cedar and the flow rule), budget (reservation), "
                               "audit (the Action and its audit event).", ["stage"], buckets=FAST)
RESERVED = Counter("warden_reserved_micros", "Micro-dollars reserved by allowed actions, by team.", ["team"])
SPENT = Counter("warden_spent_micros", "Micro-dollars charged at completion, by team and model or tool.",
                ["team", "resource"])
AUDIT_EVENTS = Counter("warden_audit_events", "Audit events appended (committed).")
RUNS_ENDED = Counter("warden_runs_ended", "Agent runs that ended, by status.", ["status"])
RUN_SECONDS = Histogram("warden_run_seconds", "Duration of agent runs that ended.", ["status"], buckets=SLOW)
STEPS = Counter("warden_run_steps", "Run steps finished, by kind and outcome.", ["kind", "outcome"])
STEP_SECONDS = Histogram("warden_run_step_seconds", "Duration of run steps.", ["kind"], buckets=SLOW)
UPSTREAM_SECONDS = Histogram("warden_upstream_seconds", "Calls to model providers and gateway upstreams.",
                             ["transport", "upstream"], buckets=SLOW)
UPSTREAM_ERRORS = Counter("warden_upstream_errors", "Failed calls to model providers and gateway upstreams.",
                          ["transport", "upstream", "kind"])


def safely(function, *args, **kwargs) -> None:
    """Metrics never break the work they describe."""
    try:
        function(*args, **kwargs)
    except Exception:  # pragma: no cover - a full disk under the multiprocess directory, say
        import logging

        logging.getLogger(__name__).warning("could not record a metric", exc_info=True)


def decision(*, action: str, outcome: str, stages: dict[str, float], team: str, reserved: int) -> None:
    def record():
        GATE_DECISIONS.labels(action, outcome).inc()
        GATE_SECONDS.labels(action).observe(sum(stages.values()))
        for stage, seconds in stages.items():
            GATE_STAGE_SECONDS.labels(stage).observe(seconds)
        if reserved:
            RESERVED.labels(team).inc(reserved)

    safely(record)


def upstream(transport: str, name: str, seconds: float, error: str | None = None) -> None:
    """One call to a provider or a gateway upstream (error: a short kind, e.g. "timeout", "429")."""
    def record():
        UPSTREAM_SECONDS.labels(transport, name).observe(seconds)
        if error:
            UPSTREAM_ERRORS.labels(transport, name, error).inc()

    safely(record)


def host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or "unknown"
    except ValueError:
        return "unknown"


class StateCollector:
    """What is read from PostgreSQL when scraped."""

    def collect(self):
        from django.db import connection
        from django.utils import timezone

        from .selectors import metrics_state

        try:
            state = metrics_state(now=timezone.now())
        except Exception:  # the database is down: the scrape still answers what the processes counted
            import logging

            logging.getLogger(__name__).warning("metrics: state unavailable", exc_info=True)
            connection.close()
            return
        pending = GaugeMetricFamily("warden_approvals_pending", "Approvals waiting for a person, by group.",
                                    labels=["group"])
        for group, count in state["pending_by_group"].items():
            pending.add_metric([group], count)
        yield pending
        yield GaugeMetricFamily("warden_approval_oldest_pending_seconds", "Age of the oldest pending approval.",
                                value=state["oldest_pending_seconds"])
        runs = GaugeMetricFamily("warden_runs", "Agent runs not ended, by status.", labels=["status"])
        for status, count in state["runs_by_status"].items():
            runs.add_metric([status], count)
        yield runs
        limit = GaugeMetricFamily("warden_budget_limit_micros", "Monthly limit of each active budget.",
                                  labels=["budget"])
        spent = GaugeMetricFamily("warden_budget_spent_micros", "Spent this month, per active budget.",
                                  labels=["budget"])
        held = GaugeMetricFamily("warden_budget_reserved_micros", "Reserved now, per active budget.",
                                 labels=["budget"])
        for name, (limit_micros, spent_micros, reserved_micros) in state["budgets"].items():
            limit.add_metric([name], limit_micros)
            spent.add_metric([name], spent_micros)
            held.add_metric([name], reserved_micros)
        yield limit
        yield spent
        yield held
        yield GaugeMetricFamily("warden_audit_chain_unchecked_seconds", "Age of the oldest audit event not yet "
                                "covered by a checkpoint (0: all covered).", value=state["unchecked_seconds"])
        yield GaugeMetricFamily("warden_agents_active", "Agents that acted in the last 5 minutes.",
                                value=state["agents_active"])


def exposition() -> bytes:
    """The text a scrape gets: every process's counters (multiprocess mode) and the database's state."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    registry.register(StateCollector())
    return generate_latest(registry)
