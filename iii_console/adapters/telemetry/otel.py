"""The OpenTelemetry side of tracing: provider, OTLP/HTTP exporter, spans of HTTP requests and message runs.

Imported only when tracing is configured (``adapters/telemetry/__init__.py``).
Trace ids are ours: a span that starts a trace gets the trace id the events of
its request or message carry (an ``IdGenerator`` that returns the pinned one),
and an incoming W3C ``traceparent`` gives the request its trace id. A message
run's parent is the span that enqueued it, carried in the message's
``traceparent`` option.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from iii_console.core import spans

_PIN: ContextVar[str | None] = ContextVar("iii_pinned_trace_id", default=None)
_PROPAGATOR = TraceContextTextMapPropagator()


class _OurTraceIds(RandomIdGenerator):
    """A new trace takes the trace id pinned for it (ours), else a random one."""

    def generate_trace_id(self) -> int:
        pinned = _PIN.get()
        if pinned:
            try:
                value = int(pinned, 16)
            except ValueError:
                value = 0
            if len(pinned) == 32 and value:
                return value
        return super().generate_trace_id()


def _value(v: Any) -> Any:
    if isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return list(v)
    return json.dumps(v, default=str)


def _attrs(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in attributes.items() if v is not None}


class Run:
    """One span made current: in our seam (``core/spans``) and in OpenTelemetry's context,
    so the user's own OpenTelemetry spans inside a handler become its children."""

    def __init__(self, span: Any):
        self.span = span
        sc = span.get_span_context()
        self.trace_id = f"{sc.trace_id:032x}"
        self.span_id = f"{sc.span_id:016x}"
        self.flags = f"{int(sc.trace_flags):02x}"
        self._tokens: tuple[Any, Any] | None = None
        self.failed = False

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        self.span.add_event(name, _attrs(attributes))

    def fail(self, exc: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))

    def answered(self, status: int) -> None:
        """An HTTP request's answer: its status, and an error status for a 5xx."""
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500 and not self.failed:
            self.span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))

    def enter(self) -> Run:
        self._tokens = (spans.use(self), otel_context.attach(trace.set_span_in_context(self.span)))
        return self

    def end(self, exc: BaseException | None = None) -> None:
        if exc is not None:
            self.fail(exc)
        if self._tokens is not None:
            ours, theirs = self._tokens
            self._tokens = None
            try:
                otel_context.detach(theirs)
                spans.reset(ours)
            except ValueError:  # ended from another context than it was entered in: nothing to restore there
                pass
        self.span.end()


class Tracing:
    """This process's tracer provider and the two kinds of span it makes."""

    def __init__(self, url: str, service: str, role: str):
        resource = Resource.create({"service.name": service, "iii.role": role})
        self.provider = TracerProvider(resource=resource, id_generator=_OurTraceIds())
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        self.tracer = self.provider.get_tracer("iii_console")
        self.url = url
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            # The handlers' own ``trace.get_tracer(...)`` export through this one too.
            trace.set_tracer_provider(self.provider)

    def _start(self, name: str, kind: SpanKind, parent: Any, trace_id: str, attributes: dict[str, Any]) -> Run:
        token = _PIN.set(trace_id)
        try:
            span = self.tracer.start_span(name, context=parent, kind=kind, attributes=_attrs(attributes))
        finally:
            _PIN.reset(token)
        return Run(span)

    def http_run(self, *, step: str, method: str, route: str, path: str, traceparent: str | None) -> Run:
        """The span of one HTTP request (not yet entered); its ``trace_id`` is the request's trace id.

        A valid incoming ``traceparent`` makes it that trace's child; otherwise it starts a trace.
        """
        incoming = spans.parse_traceparent(traceparent)
        if incoming is not None:
            parent, trace_id = _PROPAGATOR.extract({"traceparent": traceparent.strip()}), incoming[0]  # type: ignore[union-attr]
        else:
            parent, trace_id = otel_context.Context(), uuid.uuid4().hex
        return self._start(
            f"{method} {route}",
            SpanKind.SERVER,
            parent,
            trace_id,
            {"http.request.method": method, "http.route": route, "url.path": path, "iii.step": step, "iii.trace_id": trace_id},
        )

    def message_run(
        self,
        *,
        step: str | None,
        topic: str | None,
        options: Mapping[str, Any],
        message_id: str,
        queue: str,
        attempt: int,
        queue_wait_ms: int | None,
    ) -> Run:
        """The span of one attempt at one message, the child of the span that enqueued it."""
        trace_id = str(options.get("trace_id") or "")
        tp = options.get("traceparent")
        parent = (
            _PROPAGATOR.extract({"traceparent": tp})
            if isinstance(tp, str) and spans.parse_traceparent(tp)
            else otel_context.Context()
        )
        return self._start(
            f"process {topic or queue}",
            SpanKind.CONSUMER,
            parent,
            trace_id,
            {
                "messaging.system": "iii",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.message.id": message_id,
                "iii.step": step,
                "iii.topic": topic,
                "iii.queue": queue,
                "iii.attempt": attempt,
                "iii.queue_wait_ms": queue_wait_ms,
                "iii.trace_id": trace_id,
                "iii.priority": options.get("priority"),
            },
        )

    def close(self) -> None:
        """Export what is buffered and stop (at the process's stop)."""
        self.provider.shutdown()
