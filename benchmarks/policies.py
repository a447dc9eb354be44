"""Policy evaluation: whole-set vs sliced, and a differential check between them.

Generates a realistic policy set (per-agent, per-team, per-role, per-resource
rules, escalations, observe-mode rules and a few global rules), compiles it
once, and times the decision for random requests.
"""

from __future__ import annotations

import json
import random
import statistics
import time

from cedarpy import PolicySet, is_authorized

from governance.policy_engine import ACTION_RESOURCE, CompiledPolicySet, PolicyRow, Request

AGENTS, TEAMS, ROLES, RESOURCES = 300, 30, 12, 40
ACTIONS = list(ACTION_RESOURCE)


def team_of(i: int) -> str:
    return f"team-{i % TEAMS:02d}"


def roles_of(i: int) -> list[str]:
    return sorted({f"role-{i % ROLES:02d}", f"role-{(i * 7) % ROLES:02d}"})


def resource_id(action: str, n: int) -> str:
    kind = ACTION_RESOURCE[action]
    return {"Model": f"model-{n:02d}", "Tool": f"tool-{n:02d}", "Endpoint": f"host-{n:02d}.example.com",
            "DataView": f"view-{n:02d}", "Agent": f"agent-{n:03d}"}[kind]


def resource_uid(action: str, n: int) -> str:
    return f'{ACTION_RESOURCE[action]}::"{resource_id(action, n)}"'


def generate_policies(count: int, seed: int = 7) -> list[PolicyRow]:
    rnd = random.Random(seed)
    rows = [
        PolicyRow("global-permit-tools", 1, 'permit(principal, action == Action::"tool.call", resource);'),
        PolicyRow("global-clearance", 1, 'forbid(principal, action == Action::"data.read", resource) when { resource.classification > principal.clearance };'),
        PolicyRow("global-depth", 1, "forbid(principal, action, resource) when { context.delegation_depth > 2 };"),
    ]
    rows = rows[: min(count, len(rows))]
    while len(rows) < count:
        n = len(rows)
        action = rnd.choice(ACTIONS)
        kind = rnd.random()
        agent, team, role = rnd.randrange(AGENTS), rnd.randrange(TEAMS), rnd.randrange(ROLES)
        res = resource_uid(action, rnd.randrange(RESOURCES))
        if kind < 0.35:
            body = f'permit(principal == Agent::"agent-{agent:03d}", action == Action::"{action}", resource == {res});'
        elif kind < 0.55:
            body = f'permit(principal in Role::"role-{role:02d}", action == Action::"{action}", resource == {res}) when {{ context.hour >= {rnd.randrange(0, 8)} }};'
        elif kind < 0.70:
            body = f'forbid(principal in Team::"team-{team:02d}", action == Action::"{action}", resource == {res});'
        elif kind < 0.80:
            body = f'forbid(principal == Agent::"agent-{agent:03d}", action == Action::"{action}", resource) when {{ context.estimated_cost_micros > {rnd.randrange(1, 50) * 100_000} }};'
        elif kind < 0.88:
            body = f'@escalate("finance")\nforbid(principal in Team::"team-{team:02d}", action == Action::"{action}", resource) when {{ context.estimated_cost_micros > {rnd.randrange(1, 50) * 100_000} }};'
        elif kind < 0.94:
            body = f'@mode("observe")\nforbid(principal == Agent::"agent-{agent:03d}", action == Action::"{action}", resource == {res});'
        else:
            body = f'permit(principal in Team::"team-{team:02d}", action == Action::"{action}", resource) when {{ context.weekday <= {rnd.randrange(1, 8)} }};'
        rows.append(PolicyRow(f"p-{n:05d}", 1, body))
    return rows


def generate_requests(count: int, seed: int = 11) -> list[Request]:
    rnd = random.Random(seed)
    requests = []
    for _ in range(count):
        i = rnd.randrange(AGENTS)
        action = rnd.choice(ACTIONS)
        agent = {
            "uid": {"type": "Agent", "id": f"agent-{i:03d}"},
            "attrs": {"name": f"agent-{i:03d}", "owner": {"__entity": {"type": "User", "id": "admin"}},
                      "team": {"__entity": {"type": "Team", "id": team_of(i)}}, "clearance": i % 4,
                      "models": [], "tools": []},
            "parents": [{"type": "Team", "id": team_of(i)}] + [{"type": "Role", "id": r} for r in roles_of(i)],
        }
        n = rnd.randrange(RESOURCES)
        kind = ACTION_RESOURCE[action]
        attrs = {"classification": n % 4} if kind == "DataView" else {"host": resource_id(action, n)} if kind == "Endpoint" else {}
        if kind == "Agent":
            target_i = n
            resource = json.loads(json.dumps(agent))
            resource["uid"]["id"] = resource["attrs"]["name"] = f"agent-{target_i:03d}"
        else:
            resource = {"uid": {"type": kind, "id": resource_id(action, n)}, "attrs": attrs, "parents": []}
        context = {"estimated_cost_micros": rnd.randrange(0, 6_000_000), "model": resource_id(action, n) if kind == "Model" else "",
                   "data_classification": n % 4, "delegation_depth": rnd.choice([0, 0, 0, 1, 2, 3]),
                   "hour": rnd.randrange(24), "weekday": rnd.randrange(1, 8)}
        requests.append(Request(action=action, agent=agent, resource=resource, context=context))
    return requests


def _timed(fn, items, repeat: int = 1) -> list[float]:
    samples = []
    for _ in range(repeat):
        for item in items:
            start = time.perf_counter_ns()
            fn(item)
            samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def p(samples, q) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


def run(report) -> bool:
    report("== Policy evaluation (cedarpy, this machine) ==")
    requests = generate_requests(10_000)
    sample = requests[:2000]
    ok = True
    for count in (2, 60, 2000):
        rows = generate_policies(count)
        compiled = CompiledPolicySet(count, rows, slice_cache_size=100_000)
        whole = PolicySet.from_str("\n".join(row.body for row in rows))
        whole_samples = _timed(lambda r: is_authorized(r.cedar(), whole, r.entities()), sample)
        for r in sample:  # warm the slice cache as a running process would
            compiled.decide(r)
        fast_samples = _timed(compiled.decide, sample)
        report(f"{count:>5} policies: whole-set is_authorized p50 {p(whole_samples, 50):7.1f} µs | "
               f"sliced policy step p50 {p(fast_samples, 50):6.1f} µs, p99 {p(fast_samples, 99):6.1f} µs "
               f"({p(whole_samples, 50) / p(fast_samples, 50):.1f}x)"
               + (" (target <= 150 µs p50, >= 10x)" if count == 2000 else ""))
        if count == 2000:
            from benchmarks import results

            results.add("policies", "policy step at 2,000 policies, sliced, p50", p(fast_samples, 50), "µs", at_most=150)
            results.add("policies", "sliced against whole set at 2,000 policies", p(whole_samples, 50) / p(fast_samples, 50),
                        "x", at_least=10)
            mismatches = 0
            outcomes: dict[str, int] = {}
            for r in requests:
                a, b = compiled.decide(r), compiled.decide_whole(r)
                outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
                if (a.outcome, sorted(a.policies), a.observed) != (b.outcome, sorted(b.policies), b.observed):
                    mismatches += 1
            report(f"differential check: {len(requests)} requests, sliced vs whole-set decisions and deciding "
                   f"policies differ in {mismatches} (outcomes: {outcomes}); "
                   f"{len(compiled._slices)} distinct slices cached")
            results.add("policies", "differential check, 10,000 requests: differences", mismatches, "", at_most=0)
            ok = ok and mismatches == 0
            start = time.perf_counter()
            CompiledPolicySet(count, rows)
            report(f"compiling a 2000-policy version: {(time.perf_counter() - start) * 1000:.0f} ms (once per process per publish)")
    return ok
