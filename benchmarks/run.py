"""`make bench`: prints Warden's performance figures on this machine.

Runs against its own database (warden_bench), which it resets. Figures are
printed, never asserted; the run fails only if the differential check finds
the fast policy path disagreeing with whole-set evaluation.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")
    os.environ["WARDEN_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from benchmarks import budget, fixtures, gate, http, policies

    def report(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    ok = policies.run(report)
    fixtures.reset_database()
    agents, secrets = fixtures.build_fleet(agent_count=32, policy_count=2000)
    gate.run(report, agents, threads=1, calls=400)
    gate.run(report, agents, threads=8, calls=300)
    http.run(report, secrets[3])
    budget.run(report, agents)
    report(f"(bench took {time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
