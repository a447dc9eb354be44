"""The gate's differential check at full size: 10,000 generated requests through the old (slow) path and the
hot path, compared write by write (tests/gate/test_hotpath.py). `make test` runs it at a smaller size to keep
the suite within CI's budget; the bench runs it whole and records the differences found."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import results

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 10_000


def run(report) -> bool:
    report(f"== Differential check: {REQUESTS:,} generated requests, slow path against hot path ==")
    started = time.perf_counter()
    env = dict(os.environ, WARDEN_DIFFERENTIAL_REQUESTS=str(REQUESTS))
    finished = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "tests/gate/test_hotpath.py", "-k", "decides_and_writes_what_the_slow_path_would", "-s"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    found = re.search(r"differences: (\d+)", finished.stdout)
    differences = int(found.group(1)) if found else (0 if finished.returncode == 0 else -1)
    tail = "\n".join(finished.stdout.strip().splitlines()[-3:])
    report(f"{REQUESTS:,} requests, {differences} differences, in {seconds:.0f} s (pytest exit {finished.returncode})\n{tail}")
    if finished.returncode != 0 and differences <= 0:
        report("the differential run failed without counting differences (see its output above): no figure")
        return False
    results.add("differential", f"differences over {REQUESTS:,} requests (old path vs hot path)", differences, "",
                at_most=0)
    return finished.returncode == 0
