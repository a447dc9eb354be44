"""Error pages: problem+json under /api/, HTML elsewhere; never a traceback."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render

from .context import get_correlation_id

TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 500: "Server error"}


def problem_response(request, status: int, detail: str) -> JsonResponse:
    body = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.path,
        "correlation_id": get_correlation_id() or getattr(request, "correlation_id", None),
    }
    return JsonResponse(body, status=status, content_type="application/problem+json")


def _page(request, status: int, detail: str):
    if request.path.startswith("/api/"):
        return problem_response(request, status, detail)
    return render(request, "error.html", {"status": status, "title": TITLES[status], "detail": detail}, status=status)


def bad_request(request, exception=None, detail: str = "The request could not be understood."):
    return _page(request, 400, detail)


def permission_denied(request, exception=None):
    return _page(request, 403, "Your groups do not allow this.")


def not_found(request, exception=None):
    return _page(request, 404, "There is nothing here.")


def server_error(request):
    return _page(request, 500, "Something went wrong on our side; it has been logged.")
