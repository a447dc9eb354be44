import logging
import re

import pytest

from governance.context import get_correlation_id


def test_every_response_carries_a_new_request_id(client, db):
    first = client.get("/healthz")["X-Request-ID"]
    second = client.get("/healthz")["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_a_valid_incoming_request_id_is_kept(client, db):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="caller-trace-0001")
    assert response["X-Request-ID"] == "caller-trace-0001"


@pytest.mark.parametrize("bad", ["short", "has spaces in it ok", "<script>alert(1)</script>", "x" * 200])
def test_an_invalid_incoming_request_id_is_replaced(client, db, bad):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=bad)
    assert response["X-Request-ID"] != bad
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_the_request_id_is_available_to_code_and_logs_during_the_request(client, db, caplog, monkeypatch):
    seen = {}
    from governance import views

    original = views.readiness

    def spy():
        seen["id"] = get_correlation_id()
        logging.getLogger("warden.test").warning("probing")
        return original()

    monkeypatch.setattr(views, "readiness", spy)
    with caplog.at_level(logging.WARNING, logger="warden.test"):
        response = client.get("/readyz", HTTP_X_REQUEST_ID="probe-request-42")
    assert seen["id"] == "probe-request-42" == response["X-Request-ID"]
    record = next(r for r in caplog.records if r.name == "warden.test")
    assert record.correlation_id == "probe-request-42"
    assert get_correlation_id() is None  # nothing leaks past the request


def test_json_log_lines_carry_the_correlation_id():
    import json

    from governance.context import correlation_scope
    from governance.logging import ContextFilter, JsonFormatter

    record = logging.makeLogRecord({"name": "x", "msg": "hello %s", "args": ("world",), "levelname": "INFO"})
    with correlation_scope("abc-12345678"):
        ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world"
    assert line["correlation_id"] == "abc-12345678"


def test_celery_tasks_inherit_the_correlation_id_of_the_work_that_enqueued_them():
    from governance.celery import _restore_correlation_id, _stamp_correlation_id
    from governance.context import correlation_scope

    headers = {}
    with correlation_scope("enqueue-1234abcd"):
        _stamp_correlation_id(headers=headers)
    assert headers == {"correlation_id": "enqueue-1234abcd"}

    class Request:
        correlation_id = headers["correlation_id"]

    class Task:
        request = Request()

    _restore_correlation_id(task_id="t1", task=Task())
    try:
        assert get_correlation_id() == "enqueue-1234abcd"
    finally:
        from governance.celery import _clear_correlation_id

        _clear_correlation_id(task_id="t1")
    assert get_correlation_id() is None
