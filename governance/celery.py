"""The Celery app: `celery -A governance worker` and `celery -A governance beat`.

The correlation id of the work that enqueued a task travels in the task's
headers and is restored around the task, so logs and audit events of the
worker join those of the request that caused them.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")

app = Celery("governance")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

_tokens: dict[str, object] = {}


@before_task_publish.connect
def _stamp_correlation_id(headers=None, **kwargs) -> None:
    from .context import get_correlation_id

    correlation_id = get_correlation_id()
    if headers is not None and correlation_id and "correlation_id" not in headers:
        headers["correlation_id"] = correlation_id


@task_prerun.connect
def _restore_correlation_id(task_id=None, task=None, **kwargs) -> None:
    from .context import _correlation_id, clean_correlation_id, new_correlation_id

    incoming = getattr(task.request, "correlation_id", None) if task is not None else None
    _tokens[task_id] = _correlation_id.set(clean_correlation_id(incoming) or new_correlation_id())


@task_postrun.connect
def _clear_correlation_id(task_id=None, **kwargs) -> None:
    from .context import _correlation_id

    token = _tokens.pop(task_id, None)
    if token is not None:
        _correlation_id.reset(token)
