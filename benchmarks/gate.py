"""The whole in-process gate with concurrent callers on separate connections."""

from __future__ import annotations

import contextlib
import importlib
import threading
import time

from django.db import connection
from django.db.models import Count

from benchmarks.policies import p
from governance import hotpath
from governance.gate import complete_action, request_action
from governance.models import Action

COMMIT_SQL = importlib.import_module("governance.migrations.0011_gate_commit").SQL


@contextlib.contextmanager
def without_audit():
    """The hot path's write without its audit append (no chain head, no event), in the bench's own database,
    to show what the append costs the gate; the real function is put back afterwards."""
    start = COMMIT_SQL.index("    INSERT INTO audit_chainhead")
    end = COMMIT_SQL.index("RETURNING id INTO v_event;") + len("RETURNING id INTO v_event;")
    variant = COMMIT_SQL[:start] + "    v_event := 0;" + COMMIT_SQL[end:]
    with connection.cursor() as cursor:
        cursor.execute(variant)
    connection.close()  # each caller's connection prepares the function afresh
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(COMMIT_SQL)
        connection.close()


def run(report, agents, *, threads: int = 8, calls: int = 300, audit: bool = True) -> dict:
    """`audit=False` takes the audit append out of the hot path's write, to show what it costs the gate."""
    report(f"== Gate in process: {threads} concurrent caller(s), separate connections"
           f"{'' if audit else ', audit append switched off'} ==")
    with (contextlib.nullcontext() if audit else without_audit()):
        return _run(report, agents, threads, calls, audit)


def _run(report, agents, threads: int, calls: int, audit: bool) -> dict:
    samples: list[list[float]] = [[] for _ in range(threads)]
    stages: dict[str, list[float]] = {"read": [], "write": []}
    barrier = threading.Barrier(threads + 1)
    read, commit = hotpath.read, hotpath.commit

    def timed(name, function):
        def call(**kwargs):
            start = time.perf_counter_ns()
            try:
                return function(**kwargs)
            finally:
                stages[name].append((time.perf_counter_ns() - start) / 1e6)
        return call

    def caller(n: int) -> None:
        agent = agents[n % len(agents)]
        body = {"input_tokens": 800, "max_output_tokens": 200, "estimated_cost_micros": 1500}
        for _ in range(20):  # warm this connection and the slice cache
            request_action(agent=agent, action="llm.call", resource="model-01", context=body)
        barrier.wait()
        for i in range(calls):
            start = time.perf_counter_ns()
            request_action(agent=agent, action="llm.call", resource=f"model-{i % 40:02d}", context=body)
            samples[n].append((time.perf_counter_ns() - start) / 1e6)
        connection.close()

    if threads == 1:  # where one decision's time goes (list appends: safe with one caller)
        hotpath.read, hotpath.commit = timed("read", read), timed("write", commit)
    try:
        workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
    finally:
        hotpath.read, hotpath.commit = read, commit
    flat = [x for s in samples for x in s]
    outcomes = dict(Action.objects.values_list("outcome").annotate(n=Count("id")))
    target = "target <= 2 ms" if threads == 1 else "target <= 15 ms"
    report(f"{len(flat)} decisions in {elapsed:.2f} s = {len(flat) / elapsed:.0f}/s; "
           f"latency p50 {p(flat, 50):.2f} ms ({target}), p99 {p(flat, 99):.2f} ms (identity, scopes, 2,004 "
           f"policies, budget step, {'audit append, ' if audit else ''}commit); outcomes recorded: {outcomes}")
    if stages["read"] and stages["write"]:
        read_ms, write_ms = p(stages["read"], 50), p(stages["write"], 50)
        report(f"  where it goes (p50): the read {read_ms:.2f} ms, the write {write_ms:.2f} ms (each one round trip; "
               f"SELECT 1 costs {_select_one():.2f} ms here), Python (judgement, policies, building the records) "
               f"{max(0.0, p(flat, 50) - read_ms - write_ms):.2f} ms")
    return {"p50": p(flat, 50), "p99": p(flat, 99), "rate": len(flat) / elapsed}


def _select_one() -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        start = time.perf_counter_ns()
        for _ in range(200):
            cursor.execute("SELECT 1")
        return (time.perf_counter_ns() - start) / 1e6 / 200


def round_trips(report, agent) -> int:
    """PostgreSQL round trips of one allowed decision: every statement the gate sends (Django's execute
    wrapper sees them all), plus BEGIN and COMMIT if any of them ran in a transaction of Django's (the slow
    path's). #16's target is 2."""
    body = {"input_tokens": 800, "max_output_tokens": 200, "estimated_cost_micros": 1500}
    request_action(agent=agent, action="llm.call", resource="model-02", context=body)  # warm caches
    statements: list[str] = []
    in_transaction = []

    def counted(execute, sql, params, many, context):
        statements.append(" ".join(sql.split())[:110])
        in_transaction.append(connection.in_atomic_block)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(counted):
        action = request_action(agent=agent, action="llm.call", resource="model-02", context=body)
    assert action.outcome == "allowed", action.reasons
    transaction_statements = 2 if any(in_transaction) else 0
    total = len(statements) + transaction_statements
    kinds: dict[str, int] = {}
    for statement in statements:
        verb = statement.split()[0].upper() if statement else "?"
        kinds[verb] = kinds.get(verb, 0) + 1
    report(f"round trips per allowed decision: {total} (target <= 2): {len(statements)} statements "
           f"({', '.join(f'{verb} x{n}' for verb, n in sorted(kinds.items()))})"
           f"{' + BEGIN + COMMIT' if transaction_statements else ', each its own transaction'}")
    for statement in statements:
        report(f"  {statement}")
    return total


def completion(report, agent, *, calls: int = 150) -> float:
    """What settling an allowed call costs (gate.complete_action: the reservation settled at Warden's price,
    the ledger, budget alerts, the audit event): still one statement at a time in a transaction. The gateway
    answers the agent once the spend is committed, so this is on its response path."""
    body = {"input_tokens": 800, "max_output_tokens": 200}
    usage = {"input_tokens": 700, "output_tokens": 100}
    actions = [request_action(agent=agent, action="llm.call", resource="model-02", context=body)
               for _ in range(calls + 20)]
    samples = []
    for number, action in enumerate(actions):
        start = time.perf_counter_ns()
        complete_action(action=action, status="succeeded", usage=usage, usage_source="provider")
        if number >= 20:
            samples.append((time.perf_counter_ns() - start) / 1e6)
    report(f"completing an allowed call (complete_action, on the gateway's response path): p50 {p(samples, 50):.2f} ms, "
           f"p99 {p(samples, 99):.2f} ms")
    return p(samples, 50)
