"""Error pages: problem+json under /api/, HTML elsewhere; never a traceback."""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string

from .context import get_correlation_id

TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 500: "Server error", 503: "Service unavailable"}
UNAVAILABLE = ("The database cannot be reached. Nothing is allowed that is not recorded; if you were asking for a "
               "decision, ask again with the same idempotency key, and a decision already recorded is given back.")
RETRY_AFTER = "2"
# SQLSTATE classes of a server that is not there: connection exceptions (08), and shutting down or starting
# up (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now).
UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03")


def _connection_gone() -> bool:
    """Is a database connection of this thread closed, broken, or never made (the server refused it)?"""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        raw = connection.connection
        if raw is None or raw.closed or getattr(raw, "broken", False):
            return True
    return False


def database_unavailable(exc: BaseException | None) -> bool:
    """PostgreSQL is down, restarting or unreachable: Warden fails closed with a 503, never a 500.

    Only those. An OperationalError is also a lock or statement timeout, and an error without a SQLSTATE may
    be the client's own (too many parameters): those are bugs to see, with their traceback, as 500s.
    """
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    state = getattr(exc.__cause__, "sqlstate", None)
    if state is not None:
        return state.startswith(UNAVAILABLE_STATES)
    return _connection_gone()  # no SQLSTATE: unavailable only if the connection is really gone


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
    # Django calls this while the uncaught exception is being handled: it is still sys.exc_info()'s.
    if database_unavailable(sys.exc_info()[1]):
        # Not the usual page: its layout asks for the user, whose session is in the database.
        if request.path.startswith("/api/"):
            response = problem_response(request, 503, UNAVAILABLE)
        else:
            response = HttpResponse(render_to_string("unavailable.html"), status=503)
        response["Retry-After"] = RETRY_AFTER
        return response
    return _page(request, 500, "Something went wrong on our side; it has been logged.")
