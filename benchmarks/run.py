"""`make bench`: prints Warden's performance figures on this machine.

Runs against its own database (warden_bench), which it resets. Figures are
printed, never asserted; the run fails only if the differential check finds
the fast policy path disagreeing with whole-set evaluation.

`make bench BENCH="gate audit"` runs only the named sections (policies, gate,
http, budget, audit, soak, differential). WARDEN_BENCH_AUDIT_EVENTS sets the audit
log's size (default 5,000,000); WARDEN_SOAK_SECONDS the soak's length (120).
"""

from __future__ import annotations

import os
import sys
import time

SECTIONS = ("policies", "gate", "http", "budget", "audit", "soak", "differential")


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")
    os.environ["WARDEN_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from benchmarks import audit, budget, differential, fixtures, gate, http, policies, results, soak

    sections = argv or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(f"unknown section(s): {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
        return 2

    def report(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    ok = policies.run(report) if "policies" in sections else True
    fixtures.reset_database()
    agents, secrets = fixtures.build_fleet(agent_count=32, policy_count=2000)
    if "gate" in sections:
        results.add("gate", "PostgreSQL round trips per allowed decision", gate.round_trips(report, agents[0]), "",
                    at_most=2)
        results.add("gate", "in process, 1 caller, p50", gate.run(report, agents, threads=1, calls=400)["p50"], "ms",
                    at_most=2)
        results.add("gate", "completing an allowed call, p50", gate.completion(report, agents[1]), "ms")
        eight = gate.run(report, agents, threads=8, calls=300)
        results.add("gate", "in process, 8 callers, p50", eight["p50"], "ms", at_most=15)
        results.add("gate", "in process, 8 callers, decisions/s", eight["rate"], "/s")
        report("== Gate at 8 callers: with and without the audit append (small audit table) ==")
        with_ = gate.run(report, agents, threads=8, calls=300)
        without = gate.run(report, agents, threads=8, calls=300, audit=False)
        share = max(0.0, 1 - with_['rate'] / without['rate'])
        report(f"the audit append costs {share:.0%} of gate throughput (target <= 10%)")
        results.add("gate", "audit append's share of gate throughput, 8 callers, small table", share * 100, "%",
                    at_most=10)
    if "http" in sections:
        http.run(report, secrets[3])
        http.processes(report, secrets[4], many=max(2, os.cpu_count() or 2))
    if "budget" in sections:
        budget.run(report, agents)
    if "audit" in sections:
        audit.load(report, int(os.environ.get("WARDEN_BENCH_AUDIT_EVENTS", "5000000")))
        audit.pages(report)
        audit.verification(report)
        report("== Gate at 8 callers with 5M audit events in the table: with and without the audit append, twice ==")
        for _ in range(2):  # alternated, so a disturbance on this shared VM shows as disagreement
            with_ = gate.run(report, agents, threads=8, calls=300)
            without = gate.run(report, agents, threads=8, calls=300, audit=False)
            share = max(0.0, 1 - with_['rate'] / without['rate'])
            report(f"the audit append costs {share:.0%} of gate throughput (target <= 10%)")
            results.add("audit", "audit append's share of gate throughput, 8 callers, 5M events", share * 100, "%",
                        at_most=10)
    if "soak" in sections:
        soak.run(report, agents, secrets)
    if "differential" in sections:
        ok = differential.run(report) and ok
    elapsed = time.perf_counter() - started
    report("== Every figure beside its target ==")
    report(results.table())
    report(f"written to {results.write(sections, elapsed).relative_to(results.ROOT)}")
    report(f"(bench took {elapsed:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
