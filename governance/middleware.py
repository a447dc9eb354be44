from __future__ import annotations

from django.conf import settings

from .context import _correlation_id, clean_correlation_id, new_correlation_id
from .telemetry import tracer

HEADER = "X-Request-ID"


class CorrelationIdMiddleware:
    """Stamps every request with a correlation id and returns it in `X-Request-ID`.

    A valid incoming `X-Request-ID` is kept, so a caller's id flows through
    Warden's logs, audit events and Celery tasks; anything else gets a new id.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        correlation_id = clean_correlation_id(request.headers.get(HEADER)) or new_correlation_id()
        request.correlation_id = correlation_id
        token = _correlation_id.set(correlation_id)
        try:
            with tracer.start_as_current_span(f"HTTP {request.method}") as span:
                span.set_attribute("warden.correlation_id", correlation_id)
                span.set_attribute("http.target", request.path)
                response = self.get_response(request)
                span.set_attribute("http.status_code", response.status_code)
        finally:
            _correlation_id.reset(token)
        response[HEADER] = correlation_id
        return response


class RejectNulMiddleware:
    """A NUL character in the path, the query or a form field is a 400, whatever the page.

    PostgreSQL stores no NUL in text: let one through to a query and the
    answer is a server error. JSON bodies are checked by the API's parser.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from .errors import bad_request

        if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", "") or self._in_form(request):
            return bad_request(request, detail="The request contains a NUL character, which Warden never accepts.")
        return self.get_response(request)

    @staticmethod
    def _in_form(request) -> bool:
        if request.method != "POST" or request.content_type not in ("application/x-www-form-urlencoded",
                                                                      "multipart/form-data"):
            return False
        return any("\x00" in key or any("\x00" in value for value in values)
                   for key, values in request.POST.lists())


def client_address(request) -> str:
    """The address a request came from: the peer, or, behind WARDEN_NUM_PROXIES proxies that each append
    to X-Forwarded-For, the address the outermost of them saw. A client's own X-Forwarded-For is never
    believed. Used by the API's abuse limits, the sign-in lockout and the audit log alike."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.REST_FRAMEWORK.get("NUM_PROXIES") or 0
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if not proxies or not forwarded:
        return remote
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    return hops[-min(proxies, len(hops))] if hops else remote
