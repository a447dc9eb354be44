"""OpenTelemetry tracing: one tracer provider per process.

Spans are created for every request (CorrelationIdMiddleware) and, later, for
gate decisions and agent steps; the trace id goes into logs and audit events.
Export is opt-in: WARDEN_OTEL_CONSOLE=1 prints spans; any OTLP exporter can be
added by installing it and configuring the standard OTEL_* variables.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

tracer = trace.get_tracer("warden")
_configured = False


def configure() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "warden")})
    )
    if os.environ.get("WARDEN_OTEL_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x")
