"""Exports of the timeline: streamed directly, or written by a worker with progress.

Both use the same filter (AuditFilter), the same columns and the same lines, so
a file from either is the same for the same events.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from governance.api.base import csv_lines

from . import selectors
from .filters import AuditFilter
from .models import AuditExport
from .services import audit_record

COLUMNS = ["id", "occurred_at", "actor_type", "actor_name", "agent_name", "team", "action", "resource",
           "outcome", "reasons", "policy_ids", "policy_version", "cost_micros", "data_classification",
           "correlation_id", "trace_id", "chain", "seq", "hash"]
FORMATS = {"csv": ("text/csv", "csv"), "jsonl": ("application/x-ndjson", "jsonl")}
FILTER_FIELDS = [name for name in AuditFilter.base_fields if name not in ("cursor", "after", "limit")]
PROGRESS_EVERY = 0.5  # seconds between progress writes


class ExportRefused(ValueError):
    """The export's filter is not valid; `errors` says why, per field."""

    def __init__(self, errors):
        super().__init__("invalid filter")
        self.errors = errors


def export_lines(rows: Iterable, fmt: str) -> Iterator[str]:
    """The text of an export, line by line: a CSV header and rows, or one JSON object a line."""
    if fmt == "csv":
        return csv_lines(COLUMNS, rows)
    return (json.dumps(dict(zip(COLUMNS, row)), default=str) + "\n" for row in rows)


def export_rows(filters: AuditFilter, *, user, page: int = 2000):
    """(the filtered queryset, its events as COLUMNS tuples newest first, read page by page).

    Keyset pages on the timeline's indexes rather than one server-side cursor:
    outside a transaction Django holds such a cursor WITH HOLD, which makes
    PostgreSQL materialise the whole result before the first row.
    """
    queryset = filters.filter(selectors.events(user=user)).order_by("-occurred_at", "-id")

    def rows():
        current = queryset
        while True:
            batch = list(current.values_list(*COLUMNS)[:page])
            yield from batch
            if len(batch) < page:
                return
            event_id, when = batch[-1][0], batch[-1][1]
            current = queryset.filter(Q(occurred_at__lt=when) | Q(occurred_at=when, id__lt=event_id))

    return queryset, rows()


def export_path(export: AuditExport) -> Path:
    return Path(settings.WARDEN_EXPORT_DIR) / f"{export.pk}.{FORMATS[export.format][1]}"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def download_name(export: AuditExport) -> str:
    return f"warden-audit-{export.created_at:%Y%m%d-%H%M%S}.{FORMATS[export.format][1]}"


@transaction.atomic
def export_request(*, user, query, fmt: str) -> AuditExport:
    """Queue an export of the timeline under `query` (the page's filter); a worker writes it."""
    if fmt not in FORMATS:
        raise ExportRefused({"format": ["Export as csv or jsonl."]})
    filters_data = {name: query.get(name) for name in FILTER_FIELDS if query.get(name)}
    filters = AuditFilter(filters_data)
    if not filters.is_valid():
        raise ExportRefused(filters.errors)
    export = AuditExport.objects.create(id=uuid.uuid4(), requested_by=user, created_at=timezone.now(), format=fmt,
                                        filters=filters_data)
    audit_record(action="audit.export", actor=user, resource=f"AuditExport::{export.pk}",
                 payload={"format": fmt, "filters": filters_data})
    from .tasks import export_task

    transaction.on_commit(lambda: export_task.delay(str(export.pk)))
    return export


def export_run(export_id) -> AuditExport:
    """Write the export's file, recording progress; a worker runs this (task audit.export)."""
    claimed = AuditExport.objects.filter(pk=export_id, status=AuditExport.Status.QUEUED).update(
        status=AuditExport.Status.RUNNING)
    export = AuditExport.objects.select_related("requested_by").get(pk=export_id)
    if not claimed:  # delivered twice, or already finished
        return export
    try:
        filters = AuditFilter(export.filters)
        if not filters.is_valid():
            raise ExportRefused(filters.errors)
        queryset, rows = export_rows(filters, user=export.requested_by)
        export.total = queryset.count()
        AuditExport.objects.filter(pk=export.pk).update(total=export.total)
        path = export_path(export)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial(path)
        last_report = time.monotonic()
        with partial.open("w", encoding="utf-8", newline="") as out:
            for line in export_lines(_counted(rows, export), export.format):
                out.write(line)
                if time.monotonic() - last_report >= PROGRESS_EVERY:
                    AuditExport.objects.filter(pk=export.pk).update(written=export.written)
                    last_report = time.monotonic()
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        AuditExport.objects.filter(pk=export.pk).update(
            status=AuditExport.Status.DONE, written=export.written, size_bytes=path.stat().st_size,
            finished_at=timezone.now())
    except Exception as error:
        AuditExport.objects.filter(pk=export.pk).update(
            status=AuditExport.Status.FAILED, error=f"{type(error).__name__}: {error}", finished_at=timezone.now())
        raise
    export.refresh_from_db()
    return export


def _counted(rows, export: AuditExport):
    for row in rows:
        export.written += 1
        yield row


def exports_sweep(*, now: dt.datetime | None = None) -> int:
    """Delete export files past WARDEN_EXPORT_TTL_HOURS (beat, hourly); returns how many expired.

    An export still queued or running that long had its worker stop under it: it is
    marked failed, so its page says so instead of waiting for ever.
    """
    cutoff = (now or timezone.now()) - dt.timedelta(hours=settings.WARDEN_EXPORT_TTL_HOURS)
    for export in AuditExport.objects.filter(status__in=[AuditExport.Status.QUEUED, AuditExport.Status.RUNNING],
                                             created_at__lt=cutoff):
        _partial(export_path(export)).unlink(missing_ok=True)
        AuditExport.objects.filter(pk=export.pk).update(
            status=AuditExport.Status.FAILED, finished_at=timezone.now(),
            error=f"no worker finished it within {settings.WARDEN_EXPORT_TTL_HOURS} hours; start it again")
    expired = 0
    for export in AuditExport.objects.filter(status=AuditExport.Status.DONE, finished_at__lt=cutoff):
        export_path(export).unlink(missing_ok=True)
        AuditExport.objects.filter(pk=export.pk).update(status=AuditExport.Status.EXPIRED)
        expired += 1
    return expired
