"""The whole in-process gate with concurrent callers on separate connections."""

from __future__ import annotations

import threading
import time

from django.db import connection
from django.db.models import Count

from benchmarks.policies import p
from governance import gate as gate_module
from governance.gate import request_action
from governance.models import Action


def run(report, agents, *, threads: int = 8, calls: int = 300, audit: bool = True) -> dict:
    """`audit=False` swaps the audit append for nothing, to show what it costs the gate."""
    report(f"== Gate in process: {threads} concurrent caller(s), separate connections"
           f"{'' if audit else ', audit append switched off'} ==")
    original = gate_module.audit_record
    if not audit:
        gate_module.audit_record = lambda **fields: None
    try:
        return _run(report, agents, threads, calls, audit)
    finally:
        gate_module.audit_record = original


def _run(report, agents, threads: int, calls: int, audit: bool) -> dict:
    samples: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

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

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    flat = [x for s in samples for x in s]
    outcomes = dict(Action.objects.values_list("outcome").annotate(n=Count("id")))
    report(f"{len(flat)} decisions in {elapsed:.2f} s = {len(flat) / elapsed:.0f}/s; "
           f"latency p50 {p(flat, 50):.2f} ms, p99 {p(flat, 99):.2f} ms (identity, scopes, 2,004 policies, "
           f"budget step, {'audit append, ' if audit else ''}commit); outcomes recorded: {outcomes}")
    return {"p50": p(flat, 50), "p99": p(flat, 99)}


def round_trips(report, agent) -> int:
    """PostgreSQL round trips of one allowed decision: every statement the gate sends (Django's execute
    wrapper sees them all), plus the transaction's BEGIN and COMMIT. #16's target is 2."""
    from django.db import transaction

    body = {"input_tokens": 800, "max_output_tokens": 200, "estimated_cost_micros": 1500}
    request_action(agent=agent, action="llm.call", resource="model-02", context=body)  # warm caches
    statements: list[str] = []

    def counted(execute, sql, params, many, context):
        statements.append(" ".join(sql.split())[:110])
        return execute(sql, params, many, context)

    transaction_statements = 2  # BEGIN and COMMIT: the gate's work is one transaction
    with connection.execute_wrapper(counted):
        action = request_action(agent=agent, action="llm.call", resource="model-02", context=body)
    assert action.outcome == "allowed", action.reasons
    total = len(statements) + transaction_statements
    kinds: dict[str, int] = {}
    for statement in statements:
        verb = statement.split()[0].upper() if statement else "?"
        kinds[verb] = kinds.get(verb, 0) + 1
    report(f"round trips per allowed decision: {total} (target <= 2): {len(statements)} statements "
           f"({', '.join(f'{verb} x{n}' for verb, n in sorted(kinds.items()))}) + BEGIN + COMMIT")
    for statement in statements:
        report(f"  {statement}")
    return total
