"""The span of the run in progress, for code that has something to record on it.

Tracing is optional (``adapters/telemetry``, OpenTelemetry behind the ``otel``
extra); this module holds no tracer and imports none, only the seam: a
``ContextVar`` with the current run's span, so state writes, enqueues and the
step logger can add to it, and an enqueue can carry it to the message's run as
a W3C ``traceparent``. With tracing off each function here is one
``ContextVar`` read.
"""

from __future__ import annotations

import re
from contextvars import ContextVar, Token
from typing import Any, Protocol


class RunSpan(Protocol):
    """What the tracing adapter puts here: one HTTP request's or one message run's span."""

    #: 32 lowercase hex digits (W3C trace-id).
    trace_id: str
    #: 16 lowercase hex digits (W3C parent-id).
    span_id: str
    #: ``"01"`` when sampled, ``"00"`` when not.
    flags: str

    def event(self, name: str, attributes: dict[str, Any]) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


_CURRENT: ContextVar[RunSpan | None] = ContextVar("iii_run_span", default=None)

#: ``version-trace_id-parent_id-flags`` (version 00; later versions may append fields).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def current() -> RunSpan | None:
    return _CURRENT.get()


def use(span: RunSpan | None) -> Token[RunSpan | None]:
    return _CURRENT.set(span)


def reset(token: Token[RunSpan | None]) -> None:
    _CURRENT.reset(token)


def event(name: str, **attributes: Any) -> None:
    """Record ``name`` on the current span, if there is one."""
    span = _CURRENT.get()
    if span is not None:
        span.event(name, attributes)


def fail(exc: BaseException) -> None:
    """Mark the current span failed with ``exc``, if there is one."""
    span = _CURRENT.get()
    if span is not None:
        span.fail(exc)


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, for the messages it enqueues."""
    span = _CURRENT.get()
    if span is None:
        return None
    return f"00-{span.trace_id}-{span.span_id}-{span.flags}"


def log_fields() -> dict[str, str]:
    """What a step's log line carries besides its trace id: the span it was written in."""
    span = _CURRENT.get()
    return {} if span is None else {"span_id": span.span_id}


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent`` header, else ``None``.

    Invalid per the W3C spec: version ``ff``, an all-zero trace or parent id,
    extra fields on version ``00``, upper-case hex.
    """
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id, flags
