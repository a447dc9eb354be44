"""Security's timeline: filters, keyset pages, traces, exports."""

from __future__ import annotations

import json

from django.http import Http404, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.vary import vary_on_headers

from governance.access import require
from governance.api.base import csv_lines

from . import selectors
from .filters import AuditFilter

EXPORT_COLUMNS = ["id", "occurred_at", "actor_type", "actor_name", "agent_name", "team", "action", "resource",
                  "outcome", "reasons", "policy_ids", "policy_version", "cost_micros", "data_classification",
                  "correlation_id", "trace_id", "chain", "seq", "hash"]


@require("audit.view")
@vary_on_headers("HX-Request")
def timeline(request):
    filters = AuditFilter(request.GET or None)
    events, next_cursor = ([], None)
    if filters.is_bound and not filters.is_valid():
        status = 400
    else:
        status = 200
        if not filters.is_bound:
            filters = AuditFilter({})
            filters.is_valid()
        events, next_cursor = filters.page(selectors.events(user=request.user))
    query = request.GET.copy()
    query.pop("cursor", None)
    template = "audit/timeline.html#rows" if request.htmx else "audit/timeline.html"
    return render(request, template, {
        "filters": filters, "events": events, "next_cursor": next_cursor, "query": query.urlencode(),
    }, status=status)


@require("audit.view")
def trace(request, correlation_id):
    return render(request, "audit/trace.html", {
        "correlation_id": correlation_id, "roots": selectors.trace(user=request.user, correlation_id=correlation_id),
    })


@require("audit.view")
def export(request, fmt):
    """The current filter as CSV or JSON Lines, streamed in keyset order (any size)."""
    if fmt not in ("csv", "jsonl"):
        raise Http404("Export as csv or jsonl.")
    filters = AuditFilter(request.GET)
    if not filters.is_valid():
        return render(request, "audit/timeline.html", {"filters": filters, "events": []}, status=400)
    queryset = filters.filter(selectors.events(user=request.user)).order_by("-occurred_at", "-id")
    rows = queryset.values_list(*EXPORT_COLUMNS).iterator(chunk_size=2000)
    if fmt == "csv":
        stream = csv_lines(EXPORT_COLUMNS, rows)
        content_type, suffix = "text/csv", "csv"
    else:
        stream = (json.dumps(dict(zip(EXPORT_COLUMNS, row)), default=str) + "\n" for row in rows)
        content_type, suffix = "application/x-ndjson", "jsonl"
    response = StreamingHttpResponse(stream, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="warden-audit.{suffix}"'
    return response

