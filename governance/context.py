"""The correlation id of the work in progress (a request, a Celery task, a command).

Set by CorrelationIdMiddleware for requests and by the Celery hooks in
governance.celery for tasks; read by services (audit events), logs and
outgoing task headers.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import uuid

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

# An incoming id is kept only if it looks like an id: bounded, no spaces or markup.
VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{7,127}$")


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def clean_correlation_id(value: str | None) -> str | None:
    if value and VALID_ID.match(value):
        return value
    return None


def get_correlation_id() -> str | None:
    return _correlation_id.get()


def current_correlation_id() -> str:
    """The id of the current work, creating one for work that started without one."""
    value = _correlation_id.get()
    if value is None:
        value = new_correlation_id()
        _correlation_id.set(value)
    return value


@contextlib.contextmanager
def correlation_scope(value: str | None):
    token = _correlation_id.set(clean_correlation_id(value) or new_correlation_id())
    try:
        yield _correlation_id.get()
    finally:
        _correlation_id.reset(token)
