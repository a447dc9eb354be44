"""The ASGI application uvicorn serves: HTTP through the pooled WSGI hop."""

import asyncio
import json

import pytest
from asgiref.testing import ApplicationCommunicator


def call(path: str, *, method: str = "GET", body: bytes = b"", headers=()) -> tuple[int, dict, bytes]:
    from governance.asgi import application

    async def run():
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), *headers], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        }
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
        start = await communicator.receive_output(5)
        chunks = []
        while True:
            message = await communicator.receive_output(5)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, b"".join(chunks)

    return asyncio.run(run())


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.mark.django_db(transaction=True)
def test_http_requests_are_served_with_a_request_id():
    status, headers, body = call("/healthz", headers=[(b"x-request-id", b"asgi-test-0001")])
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["x-request-id"] == "asgi-test-0001"


@pytest.mark.django_db(transaction=True)
def test_request_bodies_reach_the_api():
    status, headers, body = call("/api/v1/actions/", method="POST", body=b'{"action": "llm.call"}',
                                 headers=[(b"content-type", b"application/json"), (b"authorization", b"Bearer nope")])
    assert status == 401
    assert headers["content-type"] == "application/problem+json"


@pytest.mark.django_db(transaction=True)
def test_static_files_are_served_without_a_cdn():
    status, headers, body = call("/static/warden/app.css")
    assert status == 200 and b"--accent" in body


@pytest.mark.django_db(transaction=True)
def test_each_response_is_closed_so_django_finishes_the_request():
    """request_finished gives the thread's database connection back; a file response closes its file."""
    from django.core.signals import request_finished

    finished = []

    def receiver(**kwargs):
        finished.append(True)

    request_finished.connect(receiver)
    try:
        assert call("/healthz")[0] == 200
        assert call("/static/warden/app.css")[0] == 200
    finally:
        request_finished.disconnect(receiver)
    assert finished == [True, True]
