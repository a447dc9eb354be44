"""Shared fixtures: one persona per human group, plus an outsider with no group."""

from __future__ import annotations

import io
import secrets
from contextlib import contextmanager

import pytest
from psycopg import sql
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def fresh_correlation_id():
    """Work done by fixtures outside a request must not leak an id into the next test."""
    from governance.context import _correlation_id

    token = _correlation_id.set(None)
    yield
    _correlation_id.reset(token)


def _app_role() -> tuple[str, str]:
    """(role, password) the tests run as: WARDEN_APP_DATABASE_URL's (`make test`), else one made up here."""
    from django.conf import settings

    from governance.settings import database_from_url

    if settings.WARDEN_APP_DATABASE_URL:
        app = database_from_url(settings.WARDEN_APP_DATABASE_URL)
        return app["USER"], app["PASSWORD"]
    return "warden_test_app", secrets.token_urlsafe(24)


APP_ROLE: dict[str, str] = {}


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Two roles, as in production: the owner creates and migrates the test database (pytest-django's
    own set-up, as DATABASE_URL), `setup_database` grants the application role, and every connection
    the tests open then runs as that role (SET ROLE: the same privileges as logging in as it).
    A grant Warden is missing therefore fails here, not in production.
    """
    from django.core.management import call_command
    from django.db import connections

    role, password = _app_role()
    APP_ROLE.update(user=role, password=password)
    with django_db_blocker.unblock():
        call_command("setup_database", app_url=f"postgres://{role}:{password}@localhost/x", stdout=io.StringIO())
        connections["default"].close()
    connections["default"].settings_dict["OPTIONS"]["assume_role"] = role
    yield
    connections["default"].settings_dict["OPTIONS"].pop("assume_role", None)
    with django_db_blocker.unblock():
        connections["default"].close()


@pytest.fixture
def app_role():
    """(role, password) of the application role, to log in as it on a connection of one's own."""
    return APP_ROLE["user"], APP_ROLE["password"]


@contextmanager
def as_owner(using: str = "default"):
    """Inside the test's transaction, act as the owner of the tables (to tamper behind Warden's back).

    The role comes back at the end; if anything inside fails, rolling back the savepoint restores it too.
    """
    from django.db import connections, transaction

    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
        yield cursor
        cursor.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE["user"])).as_string(cursor.connection))


@pytest.fixture(autouse=True, scope="session")
def flush_past_the_audit_trigger():
    """Test databases are reset with TRUNCATE, which the append-only trigger and the application role refuse.

    Only the harness's reset runs as the owner with triggers off (a superuser setting, local to that
    transaction); everything a test does meets the role's privileges and the trigger.
    """
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        with as_owner(self.connection.alias) as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            original(self, sql_list)

    DatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    DatabaseOperations.execute_sql_flush = original


@pytest.fixture(autouse=True, scope="session")
def tasks_stay_in_the_test():
    """Tasks sent by committed test transactions go to an in-memory broker.

    The suite shares Redis with `make run`; on the real broker a worker there
    picked up test tasks (exports of rows that only the test database had).
    Tests run the tasks they care about themselves, as the worker would.
    """
    from governance.celery import app

    previous = app.conf.broker_url
    app.conf.broker_url = "memory://"
    yield
    app.conf.broker_url = previous


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    """Abuse counters live in Redis, which outlives each test's database: start every test at zero."""
    from django.core.cache import cache

    client = cache._cache.get_client(write=True)
    for key in client.scan_iter(match="*throttle_*"):
        client.delete(key)
    yield


@pytest.fixture
def eager_tasks():
    """Celery tasks run where they are sent (as a worker would run them), for tests about what they do."""
    from governance.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture(autouse=True, scope="session")
def fast_password_hasher():
    """PBKDF2 costs ~300 ms a user by design; tests need logins, not that cost."""
    from django.conf import settings
    from django.contrib.auth.hashers import get_hashers, get_hashers_by_algorithm

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    get_hashers.cache_clear()
    get_hashers_by_algorithm.cache_clear()


def make_user(username: str, group: str | None = None):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, email=f"{username}@example.test")
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def personas(db):
    """admin, finance, security, viewer (one per group) and outsider (no group)."""
    users = {name: make_user(f"{name}-user", name) for name in ("admin", "finance", "security", "viewer")}
    users["outsider"] = make_user("outsider-user")
    return users


@pytest.fixture
def client_for(personas):
    def login(name: str) -> Client:
        client = Client()
        client.force_login(personas[name])
        return client

    return login


@pytest.fixture
def api_for(personas):
    """A DRF client authenticated with a real human API token of the persona."""
    from rest_framework.test import APIClient

    from governance.services import api_token_issue

    def make(name: str) -> APIClient:
        client = APIClient()
        _, secret = api_token_issue(user=personas[name], name="tests")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


@pytest.fixture
def team(db):
    from agents.models import Team

    return Team.objects.get_or_create(name="research", defaults={"display_name": "Research"})[0]


@pytest.fixture
def roles(db):
    from governance.models import Role

    made = {}
    for name, scopes in {
        "llm-user": ["llm.call"],
        "researcher": ["llm.call", "tool.call", "tool.http", "data.read"],
        "orchestrator": ["llm.call", "tool.http", "data.read", "agent.delegate"],
    }.items():
        made[name] = Role.objects.update_or_create(name=name, defaults={"scopes": scopes})[0]
    return made


@pytest.fixture
def data_views(personas, team):
    """Registered data views: wiki (public), crm (internal), hr-salaries and payroll (restricted)."""
    from governance.services import data_view_create

    return {name: data_view_create(name=name, classification=label, team=team, by=personas["admin"])
            for name, label in (("wiki", "public"), ("crm", "internal"), ("hr-salaries", "restricted"),
                                ("payroll", "restricted"))}


@pytest.fixture
def make_agent(personas, team, roles):
    from agents import services

    def make(name: str = "scout", *, role_names=("researcher",), **kwargs):
        return services.agent_register(
            name=name, owner=personas["admin"], team=team, by=personas["admin"], roles=role_names, **kwargs
        )

    return make


@pytest.fixture
def agent_client():
    """A DRF client authenticated with a freshly issued key of the given agent."""
    from rest_framework.test import APIClient

    from agents import services

    def make(agent, by=None):
        _, secret = services.agent_key_issue(agent=agent, by=by or agent.owner)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


@pytest.fixture
def policy(personas):
    """Publish a policy: policy("name", "permit(...);")."""
    from governance.services import policy_create

    def make(name: str, body: str, **kwargs):
        return policy_create(name=name, body=body, by=personas["admin"], reason="test", **kwargs)

    return make


@pytest.fixture
def prices(personas):
    """gpt-4o-mini $0.15/$0.60, gpt-4o $2.50/$10 per million tokens; tool search $0.01 a call."""
    from billing.services import price_set

    price_set(kind="model", name="gpt-4o-mini", input_per_million_micros=150_000, output_per_million_micros=600_000, by=personas["finance"])
    price_set(kind="model", name="gpt-4o", input_per_million_micros=2_500_000, output_per_million_micros=10_000_000, by=personas["finance"])
    price_set(kind="tool", name="search", per_call_micros=10_000, by=personas["finance"])


@pytest.fixture
def bot(make_agent, agent_client, prices):
    """An active agent with the researcher role, two priced models, a priced tool and a key."""
    agent = make_agent("bot", allowed_models=["gpt-4o-mini", "gpt-4o"], allowed_tools=["search"])
    client = agent_client(agent)
    client.agent = agent
    return client


def ask(client, action="llm.call", resource="gpt-4o-mini", context=None, **extra):
    body = {"action": action, "resource": resource,
            "context": context if context is not None else {"input_tokens": 100, "max_output_tokens": 50}}
    body.update(extra)
    return client.post("/api/v1/actions/", body, format="json")


@pytest.fixture
def webhook_receiver():
    """A local HTTP server taking one POST: (its URL, what it received: body and X-Warden-Signature)."""
    import http.server
    import threading

    received = {}

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            received["signature"] = self.headers["X-Warden-Signature"]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.handle_request, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.server_close()
