"""The ASGI app's thread pool: work runs and answers, errors reach the caller, and a thread stuck forever does not
hold the interpreter at exit (ThreadPoolExecutor's threads do: a request cut off by a shutdown hung a test run)."""

import subprocess
import sys
import textwrap

import pytest

from governance.threads import DaemonThreadPool


def test_work_runs_on_at_most_its_threads_and_errors_reach_the_caller():
    pool = DaemonThreadPool(max_workers=2, thread_name_prefix="t")
    assert [pool.submit(pow, 2, n).result(5) for n in range(5)] == [1, 2, 4, 8, 16]
    assert len(pool._threads) <= 2
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(5)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(pow, 2, 2)


def test_a_thread_stuck_forever_does_not_hold_the_process_at_exit():
    program = textwrap.dedent("""
        import threading
        from governance.threads import DaemonThreadPool
        pool = DaemonThreadPool(max_workers=1, thread_name_prefix="stuck")
        pool.submit(threading.Event().wait)  # waits for ever, like a response whose event loop is gone
        print("leaving")
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "leaving"
