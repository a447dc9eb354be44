"""Security's timeline: filters, keyset pages, traces, exports."""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods
from django.views.decorators.vary import vary_on_headers

from governance.access import require

from . import exports, selectors
from .filters import AuditFilter
from .models import AuditExport


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
        "export_filters": {name: request.GET[name] for name in exports.FILTER_FIELDS if request.GET.get(name)},
    }, status=status)


@require("audit.view")
def trace(request, correlation_id):
    return render(request, "audit/trace.html", {
        "correlation_id": correlation_id, "roots": selectors.trace(user=request.user, correlation_id=correlation_id),
        "trace_viewer": bool(settings.WARDEN_TRACE_URL),
    })


@require("audit.view")
@require_http_methods(["POST"])
def verify_chains(request):
    """Security checks the whole log from the page: every chain's hashes and links, the archive manifests
    and the latest checkpoint (as `manage.py audit_verify`, and GET /api/v1/audit/verify/)."""
    import time

    from django.core.cache import cache

    from .verify import verify

    # One at a time (it reads the whole log): a second click, tab or person is told, not queued.
    if not cache.add("warden:audit:verifying", request.user.username, timeout=15 * 60):
        return render(request, "audit/timeline.html#verification", {"busy": cache.get("warden:audit:verifying")})
    try:
        started = time.perf_counter()
        result = verify()
        seconds = time.perf_counter() - started
    finally:
        cache.delete("warden:audit:verifying")
    # 200 either way: the page shows what was found (htmx does not swap in error answers).
    return render(request, "audit/timeline.html#verification", {"result": result, "seconds": seconds})


@require("audit.view")
def export(request, fmt):
    """The current filter as CSV or JSON Lines, streamed in keyset order (for scripts; the page uses jobs)."""
    if fmt not in exports.FORMATS:
        raise Http404("Export as csv or jsonl.")
    filters = AuditFilter(request.GET)
    if not filters.is_valid():
        return render(request, "audit/timeline.html", {"filters": filters, "events": []}, status=400)
    _, rows = exports.export_rows(filters, user=request.user)
    content_type, suffix = exports.FORMATS[fmt]
    response = StreamingHttpResponse(exports.export_lines(rows, fmt), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="warden-audit.{suffix}"'
    return response


@require("audit.view")
@require_http_methods(["GET", "POST"])
def export_jobs(request):
    """POST: queue an export of the page's filter and go to its progress; GET: my recent exports."""
    if request.method == "POST":
        try:
            job = exports.export_request(user=request.user, query=request.POST, fmt=request.POST.get("format", ""))
        except exports.ExportRefused as refused:
            return render(request, "audit/exports.html", {"errors": refused.errors, "jobs": _my_exports(request)},
                          status=400)
        return redirect("audit:export-job", job.pk)
    return render(request, "audit/exports.html", {"jobs": _my_exports(request)})


def _my_exports(request):
    return AuditExport.objects.filter(requested_by=request.user)[:20]


@require("audit.view")
@vary_on_headers("HX-Request")
def export_job(request, export_id):
    job = get_object_or_404(AuditExport, pk=export_id, requested_by=request.user)
    template = "audit/export.html#progress" if request.htmx else "audit/export.html"
    return render(request, template, {"job": job})


@require("audit.view")
def export_download(request, export_id):
    job = get_object_or_404(AuditExport, pk=export_id, requested_by=request.user, status=AuditExport.Status.DONE)
    path = exports.export_path(job)
    if not path.exists():
        raise Http404("The export file is gone; start a new export.")
    return FileResponse(path.open("rb"), as_attachment=True, filename=exports.download_name(job),
                        content_type=exports.FORMATS[job.format][0])
