"""The journeys run against a live server (the real ASGI application: HTTP, websockets, the gateway, in a
thread of the test) with a real Celery worker process (tasks from a private broker, pushes to the page's
Redis), the test database as the application role, and browsers for the people."""

from __future__ import annotations

import json

import pytest

from tests.runtime.cluster import simulated_worker
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
    with simulated_worker(tmp_path, runtime_settings, name="journey", concurrency=2,
                          WARDEN_SIMULATED_LATENCY_MS="300", WARDEN_EXPORT_DIR=str(export_dir)) as group:
        yield group


@pytest.fixture
def export_dir(settings, tmp_path):
    settings.WARDEN_EXPORT_DIR = tmp_path / "exports"
    settings.WARDEN_EXPORT_DIR.mkdir()
    return settings.WARDEN_EXPORT_DIR


__all__ = ["PROGRAMS"]
