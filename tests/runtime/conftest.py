"""Runtime fixtures: test programs on the allow-list, every model simulated and instant unless a test says."""

from __future__ import annotations

import json

import pytest

PROGRAMS = "tests.runtime.programs"


@pytest.fixture(autouse=True)
def runtime_settings(settings):
    settings.WARDEN_AGENT_PROGRAMS = [*settings.WARDEN_AGENT_PROGRAMS, *(f"{PROGRAMS}.{name}" for name in (
        "ask", "steps", "careful", "big", "structured", "planned", "endless", "fickle", "reader", "fetch", "mailer",
        "searcher", "swallow", "unjudgeable", "oversized", "strange_text", "stubborn", "analyse", "leak", "send", "boss", "hand_off",
        "bad_reads"))]
    settings.WARDEN_LLM_UPSTREAMS = json.dumps({"*": "simulated"})
    settings.WARDEN_SIMULATED_LATENCY_MS = 0
    settings.WARDEN_SIMULATED_INVALID_PERCENT = 0
    settings.WARDEN_DEMO_TRAFFIC = False
    return settings


@pytest.fixture
def permitted(policy):
    """The baseline: what the roles grant is permitted (other policies may forbid or escalate)."""
    return policy("all", "permit(principal, action, resource);")


@pytest.fixture
def runner_agent(make_agent, prices, permitted):
    """An active agent with the researcher role, two priced models, the priced `search` tool, and a program."""

    def make(program: str = "ask", name: str = "runner", **kwargs):
        kwargs.setdefault("allowed_models", ["gpt-4o-mini", "gpt-4o"])
        kwargs.setdefault("allowed_tools", ["search", "http.get", "email.send"])
        return make_agent(name, program=f"{PROGRAMS}.{program}", **kwargs)

    return make


def drive(run, limit: int = 50) -> str:
    """Advance a run as workers would, task after task, until it needs nothing more from a worker."""
    from agents.runtime.runner import run_advance

    outcome = "again"
    for _ in range(limit):
        outcome = run_advance(run.pk)
        if outcome != "again":
            break
    run.refresh_from_db()
    return outcome


@pytest.fixture
def start(personas):
    from agents.runtime.services import run_start

    def make(agent, objective: str = "say hello", **kwargs):
        kwargs.setdefault("by", personas["admin"])
        return run_start(agent=agent, objective=objective, **kwargs)

    return make
