"""OpenTelemetry spans per request: queue, batch, model and post-processing under one request span.

Off by default. With OTEL_EXPORTER_OTLP_ENDPOINT set (the OpenTelemetry collector), spans are
exported over OTLP/HTTP and joined to the caller's trace through its `traceparent` header (or the
ALB's `X-Amzn-Trace-Id`, with OTEL_PROPAGATORS=tracecontext,baggage,xray as the pods set it), so
one slow request can be followed from the load balancer to the model stage by stage. The stages of a
batch happen on the inference thread for many requests at once; each request's stage spans are
recorded afterwards with the measured start and end times.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

__all__ = ["RequestTrace", "Tracing"]

_NS = 1_000_000_000


class RequestTrace:
    """One request's span; stage spans are added with explicit times."""

    def __init__(self, tracer: trace.Tracer, headers: Mapping[str, str], start: float) -> None:
        self._tracer = tracer
        self._span = tracer.start_span("POST /v1/intent", context=extract(dict(headers)), start_time=int(start * _NS))
        self._context = trace.set_span_in_context(self._span)

    def stage(self, name: str, start: float, end: float) -> None:
        span = self._tracer.start_span(name, context=self._context, start_time=int(start * _NS))
        span.end(end_time=int(end * _NS))

    def finish(self, end: float, **attributes: str | int | float | bool) -> None:
        for key, value in attributes.items():
            self._span.set_attribute(f"peakguard.{key}", value)
        self._span.end(end_time=int(end * _NS))


class Tracing:
    def __init__(self, *, exporter: SpanExporter | None = None, service_name: str = "peakguard-model") -> None:
        """Exports to `exporter` if given, else over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set;
        otherwise tracing is off and costs nothing."""
        if exporter is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        self.enabled = exporter is not None
        self._provider: TracerProvider | None = None
        if exporter is not None:
            self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            self._provider.add_span_processor(BatchSpanProcessor(exporter))
            self._tracer: trace.Tracer = self._provider.get_tracer("peakguard.model_service")
        else:
            self._tracer = trace.NoOpTracer()

    def start(self, headers: Mapping[str, str], start: float) -> RequestTrace | None:
        return RequestTrace(self._tracer, headers, start) if self.enabled else None

    def flush(self) -> None:
        if self._provider is not None:
            self._provider.force_flush()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
