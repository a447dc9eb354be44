"""The hot path (governance/hotpath.py) against the slow path: the same decisions and the same records.

Generated requests of several agents (allowed and forbidden models and tools, unpriced ones, HTTP calls by
URL, declared and claimed classifications, reads that raise what an agent carries, tools that answer
sensitive data, budgets that fill up, policies that deny and escalate, revoked keys, a suspension, replays
and reused idempotency keys) go through both paths, one after the other, on the same committed state:
first the slow path (WARDEN_GATE_HOT_PATH off) inside a transaction that is rolled back, then the gate as
it runs (hot path on, in autocommit, as over the API), committed. What each wrote (the Action, its audit
event, its reservation lines, its approval request) must be the same, field by field, but for ids and
times.
"""

from __future__ import annotations

import datetime as dt
import os
import random

import pytest
from django.db import connection, transaction
from django.conf import settings

from agents.gateway import registry
from agents.models import Agent, Clearance
from agents.services import agent_key_issue, agent_key_revoke, agent_suspend
from billing import services as billing
from governance import gate, hotpath
from governance.models import Action, DataSink

# 3,000 in `make test` (about a minute; every kind of request still occurs many times over); `make bench` runs
# the full 10,000 (benchmarks/differential.py) and prints the differences it found in its table.
REQUESTS = int(os.environ.get("WARDEN_DIFFERENTIAL_REQUESTS", "3000"))

CAPTURE = """
SELECT a.outcome, a.reasons, a.policy_ids, a.observed, a.policy_version, a.cedar_context, a.cedar_entities,
       a.context, a.estimated_cost_micros, a.reserved_micros, a.status, a.key_id, a.delegation_id,
       a.delegation_chain, a.idempotency_key, a.request_digest, a.action, a.resource, a.allowed_at IS NOT NULL,
       (SELECT json_build_array(e.action, e.outcome, e.reasons, e.payload - 'action_id', e.payload ->> 'action_id',
                                e.cost_micros, e.data_classification, e.resource, e.actor_type, e.actor_name,
                                e.team, e.policy_ids, e.policy_version, e.delegation_chain, e.agent_name)
        FROM audit_auditevent e WHERE e.chain = 'agent:' || a.agent_id AND e.payload ->> 'action_id' = a.id::text
                                      AND e.action = 'gate.' || a.action ORDER BY e.seq DESC LIMIT 1),
       (SELECT json_agg(json_build_array(p.budget_id, l.micros) ORDER BY p.budget_id)
        FROM billing_reservationline l JOIN billing_budgetperiod p ON p.id = l.period_id WHERE l.action_id = a.id),
       (SELECT json_build_array(ap.status, ap.groups, ap.required_approvals, ap.reasons)
        FROM governance_approval ap WHERE ap.action_id = a.id)
FROM governance_action a WHERE a.id = %s
"""


def captured(action_id) -> dict:
    with hotpath.prepared_cursor() as cursor:
        cursor.execute(CAPTURE, [action_id])
        row = cursor.fetchone()
    *fields, event, lines, approval = row
    return {"action": fields, "event": event[:4] + event[5:], "lines": lines, "approval": approval}


class RolledBack(Exception):
    pass


def slow(request: dict):
    """The slow path's decision and records, rolled back."""
    result = {}
    try:
        settings.WARDEN_GATE_HOT_PATH = False  # (not override_settings: its signals cost more than a decision)
        with transaction.atomic():
            try:
                record = gate.request_action(**request)
            except Exception as exc:  # compared below
                result["error"] = type(exc).__name__
                raise RolledBack from None
            result["record"] = captured(record.pk)
            raise RolledBack
    except RolledBack:
        pass
    finally:
        settings.WARDEN_GATE_HOT_PATH = True
    return result


def fast(request: dict):
    try:
        record = gate.request_action(**request)
    except Exception as exc:  # Conflict, ValidationError: compared
        return {"error": type(exc).__name__}, None
    return {"record": captured(record.pk)}, record


@pytest.fixture
def world(personas, make_agent, policy, data_views):
    finance, admin = personas["finance"], personas["admin"]
    for name, (inp, out) in {"m-cheap": (150_000, 600_000), "m-dear": (2_500_000, 10_000_000),
                             "m-free": (0, 0)}.items():
        billing.price_set(kind="model", name=name, input_per_million_micros=inp, output_per_million_micros=out,
                          by=finance)
    billing.price_set(kind="tool", name="search", per_call_micros=10_000, by=finance)
    billing.price_set(kind="endpoint", name="api.example.com", per_call_micros=2_000, by=finance)
    billing.price_set(kind="endpoint", name="*", per_call_micros=500, by=finance)
    crm = registry.mcp_server_register(by=admin, name="crm", url="http://127.0.0.1:9/mcp/")
    registry.mcp_tool_set(server=crm, by=admin, name="lookup", price_micros=1_000, returns="confidential")
    registry.mcp_tool_set(server=crm, by=admin, name="note", price_micros=2_000, clearance="confidential")
    DataSink.objects.create(kind="model", name="m-dear", clearance=Clearance.RESTRICTED)
    DataSink.objects.create(kind="endpoint", name="api.example.com", clearance=Clearance.CONFIDENTIAL)
    DataSink.objects.create(kind="tool", name="*", clearance=Clearance.PUBLIC)

    policy("everything", "permit(principal, action, resource);")
    policy("no-dear-for-interns", 'forbid(principal, action == Action::"llm.call", resource == Model::"m-dear") '
                                  "when { principal.clearance < 1 };")
    policy("big-spend", '@escalate("finance")\nforbid(principal, action == Action::"llm.call", resource) '
                        "when { context.estimated_cost_micros > 40000 };")
    policy("no-night-crm", 'forbid(principal, action == Action::"tool.call", resource == Tool::"crm/note") '
                           "when { context.data_classification > 2 };")

    models = ["m-cheap", "m-dear", "m-free", "m-unpriced"]
    tools = ["search", "crm/lookup", "crm/note", "unpriced-tool"]
    agents = [
        make_agent("alpha", allowed_models=models, allowed_tools=tools, clearance=Clearance.CONFIDENTIAL),
        make_agent("beta", role_names=("llm-user",), allowed_models=models[:2], clearance=Clearance.INTERNAL),
        make_agent("gamma", allowed_models=models, allowed_tools=tools[:2], clearance=Clearance.PUBLIC),
        make_agent("delta", role_names=("orchestrator",), allowed_models=models, clearance=Clearance.RESTRICTED),
        make_agent("epsilon", allowed_models=models[:3], allowed_tools=tools, clearance=Clearance.INTERNAL),
        make_agent("zeta", allowed_models=models, allowed_tools=tools[1:], clearance=Clearance.RESTRICTED),
    ]
    keys = {agent.name: agent_key_issue(agent=agent, by=admin)[0] for agent in agents}
    spare = agent_key_issue(agent=agents[0], by=admin)[0]
    agent_key_revoke(key=spare, by=admin, reason="test")
    team = agents[0].team
    billing.budget_create(scope="organisation", monthly_limit_micros=10**9, by=finance)
    billing.budget_create(scope="team", team=team, monthly_limit_micros=150_000, by=finance)
    billing.budget_create(scope="agent", agent=agents[1], monthly_limit_micros=100_000, by=finance,
                          on_exceed="escalate")
    return {"agents": agents, "keys": keys, "revoked": spare, "models": models, "tools": tools}


def generate(rng: random.Random, world: dict, used: list) -> dict:
    agent = rng.choice(world["agents"])
    key = world["keys"][agent.name] if rng.random() > 0.03 else world["revoked"]
    action = rng.choices(["llm.call", "tool.call", "tool.http", "external.call", "data.read"],
                         weights=[50, 20, 10, 5, 15])[0]
    context: dict = {}
    if action == "llm.call":
        resource = rng.choice(world["models"] + ["m-other"])
        context = {"input_tokens": rng.choice([0, 10, 800, 4000]), "max_output_tokens": rng.choice([0, 50, 2000])}
    elif action == "tool.call":
        resource = rng.choice(world["tools"])
    elif action == "data.read":
        resource = rng.choice(["wiki", "crm", "hr-salaries", "payroll", "missing"])
    else:
        resource = rng.choice(["https://api.example.com/v1/x", "API.Example.com.", "other.example.org/path",
                               "https://10.0.0.1:8443/"])
    if rng.random() < 0.2:
        context["estimated_cost_micros"] = rng.choice([0, 1, 5_000, 80_000])
    if rng.random() < 0.1:
        context["data_classification"] = rng.choice(["public", "internal", "confidential", "restricted"])
    if rng.random() < 0.05:
        context["classification"] = rng.choice(["public", "restricted"])
    request = {"agent": agent, "key": key, "action": action, "resource": resource, "context": context}
    if used and rng.random() < 0.03:  # the same idempotency key again: a replay, or another request (conflict)
        previous = rng.choice(used)
        request = dict(previous) if rng.random() < 0.5 else {**request, "agent": previous["agent"],
                                                              "idempotency_key": previous["idempotency_key"]}
    elif rng.random() < 0.1:
        request["idempotency_key"] = f"k-{rng.getrandbits(40):x}"
        used.append(request)
    return request


@pytest.mark.django_db(transaction=True)
def test_the_hot_path_decides_and_writes_what_the_slow_path_would(world, personas, monkeypatch):
    rng = random.Random(16)
    written = {"hot": 0, "stale": 0}
    commit = hotpath.commit

    def counting(**kwargs):
        event_id = commit(**kwargs)
        written["hot" if event_id is not None else "stale"] += 1
        return event_id

    monkeypatch.setattr(hotpath, "commit", counting)
    local = gate._local_now()
    monkeypatch.setattr(gate, "_local_now", lambda: local)  # both paths of a pair at one hour of one day
    outcomes: dict[str, int] = {}
    used: list[dict] = []
    differences = []
    for n in range(REQUESTS):
        if n == REQUESTS * 3 // 4:
            agent_suspend(agent=world["agents"][3], by=personas["security"], reason="halfway")
        request = generate(rng, world, used)
        before = slow(request)
        after, record = fast(request)
        if before != after:
            differences.append((n, request, before, after))
        outcome = after.get("error") or after["record"]["action"][0]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if record is not None and record.outcome == "allowed" and record.status == "decided" and rng.random() < 0.3:
            gate.complete_action(action=Action.objects.get(pk=record.pk), status="succeeded",
                                 usage={"calls": 1} if record.action != "llm.call" else
                                 {"input_tokens": 5, "output_tokens": 5}, usage_source="provider")
    print(f"\ndifferential: {REQUESTS} requests, differences: {len(differences)}; outcomes {outcomes}; "
          f"written {written}")
    assert not differences, differences[:3]
    # The comparison covered what it should: every outcome, and most decisions written by the hot path.
    assert {"allowed", "denied", "pending_approval", "Conflict"} <= set(outcomes), outcomes
    assert written["hot"] > REQUESTS // 2, (written, outcomes)
    assert written["stale"] > 0, written  # budgets that fill up and the suspension send requests to the slow path


@pytest.mark.django_db(transaction=True)
def test_decisions_of_one_agent_racing_for_its_chain_head_all_land_once(make_agent, policy, prices, personas):
    """Eight callers of one agent on separate connections: their writes queue on the agent's chain head, and
    each is chained by the function under its lock, so none has to be judged again on the slow path; every
    decision is recorded exactly once, with its reservation, and the chain verifies (PostgreSQL's hashes are
    the ones audit.verify recomputes in Python)."""
    import threading

    from audit.verify import verify
    from billing.models import BudgetPeriod

    policy("all", "permit(principal, action, resource);")
    agent = make_agent("racer", allowed_models=["gpt-4o-mini"])
    billing.budget_create(scope="team", team=agent.team, monthly_limit_micros=10**9, by=personas["finance"])
    gate.request_action(agent=agent, action="llm.call", resource="gpt-4o-mini",  # opens this month's period
                        context={"input_tokens": 1000, "max_output_tokens": 1000})
    written = {"hot": 0, "stale": 0}
    commit, lock = hotpath.commit, threading.Lock()

    def counting(**kwargs):
        event_id = commit(**kwargs)
        with lock:
            written["hot" if event_id is not None else "stale"] += 1
        return event_id

    hotpath.commit = counting
    barrier, errors = threading.Barrier(8), []

    def caller():
        try:
            barrier.wait()
            for _ in range(25):
                gate.request_action(agent=agent, action="llm.call", resource="gpt-4o-mini",
                                    context={"input_tokens": 1000, "max_output_tokens": 1000})
        except Exception as exc:  # asserted below
            errors.append(exc)
        finally:
            connection.close()

    try:
        threads = [threading.Thread(target=caller) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        hotpath.commit = commit
    assert not errors, errors
    assert written == {"hot": 200, "stale": 0}, written
    assert Action.objects.filter(agent=agent, outcome="allowed").count() == 201
    each = Action.objects.filter(agent=agent).first().reserved_micros
    assert BudgetPeriod.objects.get(budget__team=agent.team).reserved_micros == 201 * each
    report = verify()
    assert report.ok, report
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(agent_id=agent.pk, action="gate.llm.call").count() == 201
    # Stamped under the chain head's lock: the chain's order and its times agree.
    times = list(AuditEvent.objects.filter(chain=f"agent:{agent.pk}").order_by("seq").values_list("occurred_at",
                                                                                                  flat=True))
    assert times == sorted(times)


def test_the_write_knows_every_column_it_must_write():
    """warden_gate_commit names the Action's and the audit event's columns: a column added to either
    must be added there too (a new migration), or the hot path would drop it."""
    import importlib

    from audit.services import EVENT_COLUMNS

    migration = importlib.import_module("governance.migrations.0011_gate_commit")
    assert set(migration.ACTION_COLUMNS) == {field.column for field in Action._meta.concrete_fields}
    assert tuple(migration.EVENT_COLUMNS) == tuple(EVENT_COLUMNS)


@pytest.mark.django_db(transaction=True)
def test_inside_a_callers_transaction_the_hot_path_writes_with_it_and_rolls_back_with_it(make_agent, policy,
                                                                                          prices):
    """The runtime and services may ask the gate inside their own transaction: the write takes a
    savepoint, commits with the caller, and leaves nothing when the caller rolls back."""
    from audit.models import AuditEvent

    policy("all", "permit(principal, action, resource);")
    agent = make_agent("inside", allowed_models=["gpt-4o-mini"])
    written, commit = [], hotpath.commit

    def counting(**kwargs):
        written.append(commit(**kwargs))
        return written[-1]

    hotpath.commit = counting
    try:
        with transaction.atomic():
            kept = gate.request_action(agent=agent, action="llm.call", resource="gpt-4o-mini",
                                       context={"input_tokens": 10, "max_output_tokens": 10})
        try:
            with transaction.atomic():
                dropped = gate.request_action(agent=agent, action="llm.call", resource="gpt-4o-mini",
                                              context={"input_tokens": 10, "max_output_tokens": 10})
                raise RolledBack
        except RolledBack:
            pass
    finally:
        hotpath.commit = commit
    assert len(written) == 2 and None not in written  # both on the hot path
    assert Action.objects.filter(pk=kept.pk).exists() and not Action.objects.filter(pk=dropped.pk).exists()
    assert AuditEvent.objects.filter(payload__action_id=str(kept.pk)).exists()
    assert not AuditEvent.objects.filter(payload__action_id=str(dropped.pk)).exists()
