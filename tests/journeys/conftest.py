"""The journeys run against a live server (the real ASGI application: HTTP, websockets, the gateway, in a
thread of the test) with a real Celery worker process (tasks from a private broker, pushes to the page's
Redis), the test database as the application role, and browsers for the people."""

from __future__ import annotations

import json
import os

import pytest

from tests.runtime.cluster import Cluster, PrivateRedis, app_database_url, broker
from tests.runtime.conftest import PROGRAMS, permitted, runner_agent, runtime_settings  # noqa: F401  (fixtures)
from tests.runtime.fake_openai import fake_openai


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]


@pytest.fixture
def upstream(settings):
    """A local server speaking the OpenAI protocol; the gateway (in this process) sends every model to it."""
    with fake_openai() as fake:
        settings.WARDEN_LLM_UPSTREAMS = json.dumps({"*": {"base_url": fake.url, "api_key": "sk-upstream",
                                                         "timeout": 5}})
        settings.WARDEN_GATEWAY_APPROVAL_WAIT = 30
        yield fake


@pytest.fixture
def worker(tmp_path, runtime_settings, export_dir):  # noqa: F811
    """One real `celery worker`: runs, exports, notifications; models answered by the simulated provider."""
    queue = PrivateRedis(tmp_path / "broker")
    queue.start()
    env = {
        **os.environ,
        "DATABASE_URL": app_database_url(),
        "WARDEN_APP_DATABASE_URL": "",
        "REDIS_URL": runtime_settings.REDIS_URL,
        "WARDEN_BROKER_URL": queue.url,
        "WARDEN_AGENT_PROGRAMS": ",".join(runtime_settings.WARDEN_AGENT_PROGRAMS),
        "WARDEN_LLM_UPSTREAMS": '{"*": "simulated"}',
        "WARDEN_SIMULATED_LATENCY_MS": "300",
        "WARDEN_SIMULATED_INVALID_PERCENT": "0",
        "WARDEN_DEMO_TRAFFIC": "0",
        "WARDEN_EXPORT_DIR": str(export_dir),
        "WARDEN_LOG_LEVEL": "INFO",
    }
    group = Cluster(tmp=tmp_path, redis=queue, env=env)
    try:
        with broker(queue.url):
            group.worker("journey", concurrency=2)
            yield group
    finally:
        group.stop()
        queue.stop()


@pytest.fixture
def export_dir(settings, tmp_path):
    settings.WARDEN_EXPORT_DIR = tmp_path / "exports"
    settings.WARDEN_EXPORT_DIR.mkdir()
    return settings.WARDEN_EXPORT_DIR


__all__ = ["PROGRAMS"]
