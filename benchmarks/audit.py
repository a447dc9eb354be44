"""The audit log at 5 million events: generation, filtered pages, verification.

The events are generated here with real hash chains (one per agent plus the
global one) and loaded with COPY from two processes; the timeline's indexes are
built after the load, as a restore would. Figures are printed, never asserted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import random
import time
import uuid

from django.db import connection
from django.test import Client

import psycopg
from psycopg.types.json import Jsonb

from audit.models import GENESIS
from audit.services import EVENT_COLUMNS, JSON_FIELDS, canonical
from audit.verify import raw_connection_params, verify
from benchmarks.policies import p

AGENT_CHAINS = 2_000
TEAMS = 40
DAYS = 120
ACTIONS = [("gate.llm.call", 55), ("gate.tool.call", 20), ("gate.complete", 15), ("gate.data.read", 5),
           ("gate.http.request", 3), ("gate.agent.delegate", 2)]
OUTCOMES = [("allowed", 86), ("denied", 10), ("pending_approval", 3), ("error", 1)]
REASONS = {
    "allowed": ["policy baseline-permit permits", "within budget team monthly"],
    "denied": ["policy confidential-data-needs-clearance forbids", "budget agent monthly exhausted: 4.20 USD left",
               "model not in the agent's allowed list", "unpriced model: no price in force"],
    "pending_approval": ["policy expensive-calls-need-finance escalates to finance"],
    "error": ["provider timed out after 30 s"],
}
USERS = ["alice", "bob", "carol", "dmitri", "erin"]


def _weighted(pairs):
    return [name for name, weight in pairs for _ in range(weight)]


def _chain_plan(total: int, seed: int = 7) -> list[tuple[str, int]]:
    """(chain, events) for every chain; agents get unequal shares, the global chain ~3 %."""
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.5) for _ in range(AGENT_CHAINS)]
    agent_total = int(total * 0.97)
    counts = [max(1, int(agent_total * w / sum(weights))) for w in weights]
    counts[0] += agent_total - sum(counts)
    plan = [(f"agent:{uuid.UUID(int=rng.getrandbits(128), version=4)}", n) for n in counts]
    plan.append(("global", total - sum(counts)))
    return plan


def _generate(job) -> tuple[int, list]:
    """Write a share of the chains with COPY on this process's own connection; returns (events, chain heads)."""
    params, chains, start_ts, end_ts, seed, existing = job
    rng = random.Random(seed)
    actions, outcomes = _weighted(ACTIONS), _weighted(OUTCOMES)
    written, heads = 0, []
    with psycopg.connect(**params) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY audit_auditevent ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
            for index, (chain, count) in chains:
                is_agent = chain != "global"
                agent_id = chain.split(":", 1)[1] if is_agent else None
                name = f"agent-{index:04d}" if is_agent else ""
                team = f"team-{index % TEAMS:02d}" if is_agent else ""
                step = (end_ts - start_ts) / count
                when = start_ts + rng.random() * step
                offset, previous = existing.get(chain, (0, GENESIS))  # the global chain may have begun
                for seq in range(offset + 1, offset + count + 1):
                    outcome = rng.choice(outcomes) if is_agent else "ok"
                    user = USERS[seq % len(USERS)]
                    fields = {
                        "chain": chain, "seq": seq, "prev_hash": previous,
                        "occurred_at": dt.datetime.fromtimestamp(when, dt.timezone.utc),
                        "actor_type": "agent" if is_agent else "user", "actor_id": agent_id or "",
                        "actor_name": name or user, "agent_id": agent_id, "agent_name": name, "team": team,
                        "delegation_chain": [{"type": "user", "name": user}, {"type": "agent", "name": name}] if is_agent else [],
                        "action": rng.choice(actions) if is_agent else "policy.publish",
                        "resource": f"Model::model-{seq % 40:02d}", "outcome": outcome,
                        "reasons": [rng.choice(REASONS.get(outcome, ["published"]))],
                        "policy_ids": ["baseline-permit"], "policy_version": 1 + seq // 5000,
                        "cost_micros": rng.randrange(100, 50_000), "data_classification": "internal",
                        "correlation_id": uuid.UUID(int=rng.getrandbits(128)).hex, "trace_id": "",
                        "payload": {"action_id": seq, "reserved_micros": 1500, "observed": False},
                    }
                    fields["hash"] = previous = hashlib.sha256(canonical(fields)).hexdigest()
                    copy.write_row([Jsonb(fields[c]) if c in JSON_FIELDS else fields[c] for c in EVENT_COLUMNS])
                    when += step * (0.5 + rng.random())
                    when = min(when, end_ts)
                    written += 1
                heads.append((chain, offset + count, previous))
        conn.commit()
    return written, heads


def load(report, total: int) -> None:
    report(f"== Audit log: generating {total:,} chained events ({AGENT_CHAINS} agent chains + global) ==")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_auditevent'
            AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'audit_auditevent'::regclass)
        """)
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute("SELECT chain, seq, hash FROM audit_chainhead")
        existing = {chain: (seq, digest) for chain, seq, digest in cursor.fetchall()}
    plan = list(enumerate(_chain_plan(total)))
    end_ts = time.time() - 60
    start_ts = end_ts - DAYS * 86400
    workers = 2
    jobs = [(raw_connection_params(), plan[n::workers], start_ts, end_ts, n, existing) for n in range(workers)]
    connection.close()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_generate, jobs)
    loaded = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            cursor.execute(definition)
        heads = [head for _, part in parts for head in part]
        cursor.executemany("INSERT INTO audit_chainhead (chain, seq, hash) VALUES (%s, %s, %s) "
                           "ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash", heads)
        cursor.execute("VACUUM ANALYZE audit_auditevent")
        cursor.execute("CHECKPOINT")  # write the load out now, not during the measurements (bench runs as superuser)
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('audit_auditevent'))")
        size = cursor.fetchone()[0]
    written = sum(n for n, _ in parts)
    report(f"{written:,} events written in {loaded - started:.0f} s ({written / (loaded - started):,.0f}/s, "
           f"hashing included); {len(indexes)} indexes built in {time.perf_counter() - loaded:.0f} s; table {size}")


def pages(report) -> None:
    report("== Audit timeline: a filtered page of 50 (GET /api/v1/audit/events/, in process, 5M events) ==")
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user = get_user_model().objects.create_user("bench-security", password="x")
    user.groups.add(Group.objects.get_or_create(name="security")[0])
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    rng = random.Random(3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(occurred_at), max(occurred_at) FROM audit_auditevent")
        oldest, newest = cursor.fetchone()
    span = (newest - oldest).total_seconds()

    def window(hours):
        start = oldest + dt.timedelta(seconds=rng.random() * (span - hours * 3600))
        return {"since": start.isoformat(), "until": (start + dt.timedelta(hours=hours)).isoformat()}

    cases = {
        "by agent": lambda: {"agent": f"agent-{rng.randrange(AGENT_CHAINS):04d}"},
        "by outcome (denied, 10 %)": lambda: {"outcome": "denied"},
        "by outcome (error, 1 %)": lambda: {"outcome": "error"},
        "by time range (1 h)": lambda: window(1),
        "by time range (7 days)": lambda: window(24 * 7),
        "by team": lambda: {"team": f"team-{rng.randrange(TEAMS):02d}"},
        "by agent + outcome denied": lambda: {"agent": f"agent-{rng.randrange(200):04d}", "outcome": "denied"},
        "by agent + time range (7 days)": lambda: {"agent": f"agent-{rng.randrange(200):04d}", **window(24 * 7)},
        "no filter, 10th page (cursor)": None,
        "free text in reasons (rare word)": lambda: {"q": "timed out"},
    }
    client.get("/api/v1/audit/events/", secure=True)  # warm the session and the code paths once
    worst = 0.0
    for label, make in cases.items():
        samples, sizes = [], []
        for i in range(30 if make else 10):
            if make is None:
                params, cursor_token = {}, None
                for _ in range(10):
                    start = time.perf_counter()
                    body = client.get("/api/v1/audit/events/", {**params, **({"cursor": cursor_token} if cursor_token else {})},
                                      secure=True).json()
                    cursor_token = body["next_cursor"]
                samples.append((time.perf_counter() - start) * 1000)
                sizes.append(len(body["results"]))
                continue
            params = make()
            start = time.perf_counter()
            response = client.get("/api/v1/audit/events/", params, secure=True)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.content[:300]
            sizes.append(len(response.json()["results"]))
        report(f"{label:34s} p50 {p(samples, 50):6.1f} ms  p95 {p(samples, 95):6.1f} ms  max {max(samples):6.1f} ms "
               f"({min(sizes)}-{max(sizes)} events a page)")
        worst = max(worst, p(samples, 50)) if "free text" not in label else worst
    from benchmarks import results

    results.add("audit", "filtered page of 50 with 5M events, slowest filter's p50", worst, "ms", at_most=50)


def verification(report) -> None:
    report("== Audit chain verification over the whole table ==")
    import os

    for workers in (1, os.cpu_count() or 1):
        started = time.perf_counter()
        result = verify(workers=workers)
        elapsed = time.perf_counter() - started
        report(f"{workers} process(es): {result.events_checked:,} events in {result.chains} chains in {elapsed:.1f} s = "
               f"{result.events_checked / elapsed:,.0f} events/s; intact: {result.ok}")
        from benchmarks import results

        results.add("audit", f"chain verification of 5M events, {workers} process(es)", result.events_checked / elapsed,
                    "events/s", at_least=50_000)
        if workers == 1 and (os.cpu_count() or 1) == 1:
            break
