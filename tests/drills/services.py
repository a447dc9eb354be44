"""What the fault drills break: a PostgreSQL cluster of their own and Warden's web process, as real processes.

The drills never touch the suite's shared PostgreSQL: `PrivatePostgres` is a second cluster from the
binaries the `pgserver` package ships (the same PostgreSQL 16), filled with a dump of the test database as
the test left it, so a drill can crash and restart it at will. `Web` is `uvicorn governance.asgi:application`
as `make run` starts it (production settings: DEBUG off, persistent connections with health checks).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx

from tests.runtime.cluster import ROOT, free_port, port_open


def _postgres_bin() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns about XDG_RUNTIME_DIR at import; unused here
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class PrivatePostgres:
    """A throwaway PostgreSQL 16 cluster on a free port, trust auth on 127.0.0.1 only."""

    def __init__(self, directory: Path):
        self.bin = _postgres_bin()
        self.data = directory / "pgdata"
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root (as in scripts/devstack.py)
            from pgserver.utils import ensure_user_exists

            self.user = "pgserver"
            ensure_user_exists(self.user)

    def _server(self, exe: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / exe), *args], user=self.user, check=check, cwd="/",
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def _client(self, exe: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / exe), *args], check=True, capture_output=True, **kwargs)

    def url(self, user: str = "postgres", password: str = "", database: str = "drill") -> str:
        secret = f":{password}" if password else ""
        return f"postgres://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.data.mkdir(parents=True)
        self.data.chmod(0o700)
        if self.user is not None:
            import pwd

            from pgserver.utils import ensure_prefix_permissions

            entry = pwd.getpwnam(self.user)
            ensure_prefix_permissions(self.data)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        self._server("initdb", "-D", str(self.data), "--auth=trust", "--encoding=utf8", "--locale=C",
                     "-U", "postgres")

    def start(self) -> None:
        result = self._server("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.data / "server.log"),
                              "-o", f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories=''", "start",
                              check=False)
        assert result.returncode == 0, result.stdout + self.log()

    def crash(self) -> None:
        """Stop as a crash does (`immediate`: no checkpoint; the next start replays the WAL)."""
        self._server("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def stop(self) -> None:
        self._server("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def log(self) -> str:
        path = self.data / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def clone(self, source_url: str, *, app_role: str, app_password: str) -> None:
        """The database `drill`: the test database's schema, grants and rows, and the application role."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(database="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(app_role),
                                                                          sql.Literal(app_password)))
            conn.execute("CREATE DATABASE drill")
        dump = self._client("pg_dump", "--no-owner", "--dbname", source_url).stdout
        self._client("psql", "--quiet", "--set", "ON_ERROR_STOP=1", "--dbname", self.url(), input=dump)


class Web:
    """Warden's web process (uvicorn, as `make run` starts it) in a process group of its own."""

    def __init__(self, *, database_url: str, log: Path, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.log_path = log
        self.env = {**os.environ, "DATABASE_URL": database_url, "WARDEN_APP_DATABASE_URL": "", "DEBUG": "0",
                    "WARDEN_LOG_LEVEL": "WARNING", "WARDEN_DEMO_TRAFFIC": "0",
                    "WARDEN_SECURE_COOKIES": "0",  # plain HTTP on the loopback: cookies a client sends back
                    **(extra_env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"the web process exited:\n{self.logs()}"
            if port_open(self.port):
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            assert time.monotonic() < deadline, f"the web process did not answer /healthz:\n{self.logs()}"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, whole group: no shutdown, no cleanup, requests cut off wherever they were."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
