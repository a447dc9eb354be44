from __future__ import annotations

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
