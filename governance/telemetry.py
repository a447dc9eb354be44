"""OpenTelemetry tracing: one tracer provider per process.

Spans: every HTTP request (CorrelationIdMiddleware), every Celery task (opentelemetry-instrumentation-celery:
the context travels in the task's headers, so a run started by a request and carried out by workers is one
trace), each run's turn on a worker (`run.advance`), each step (`run.step`), the gate (`gate.request_action`)
and each provider or tool call (`provider.chat`, `tool.call`). The trace id is written in every audit event
and log line.

Export follows the standard variables: OTEL_TRACES_EXPORTER=otlp (OTLP over HTTP, configured by
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _HEADERS ...), console, or none (the
default); OTEL_SERVICE_NAME names the service. WARDEN_OTEL_CONSOLE=1 is kept as a shorthand for console.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

tracer = trace.get_tracer("warden")
_configured = False
logger = logging.getLogger(__name__)


def _exporters() -> list:
    names = {name.strip().lower() for name in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if name.strip()}
    if os.environ.get("WARDEN_OTEL_CONSOLE") == "1":
        names.add("console")
    exporters = []
    for name in sorted(names - {"none"}):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())  # reads OTEL_EXPORTER_OTLP_* itself
        else:
            logger.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console or none)", name)
    return exporters


def configure() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "warden")})
    )
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
        CeleryInstrumentor().instrument(tracer_provider=provider)


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x")
