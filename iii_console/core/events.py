"""The lifecycle event record: one entry on the Redis event stream.

Events are flat records, never changed once made, so that a stream entry maps 1:1 to a record and the
console can decode them without knowing who wrote them. ``data`` is the only
nested field; it is JSON, size-capped and redacted at encode time.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_args

import msgspec

from iii_console.core.errors import DecodeError
from iii_console.core.eventdata import EventType
from iii_console.core.redact import REDACTED, Redactor  # noqa: F401  (REDACTED is part of this module's names)

#: Every event type the runtime emits, in the order of a message's life.
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

#: Largest encoded ``data`` kept on the stream; bigger payloads are truncated with a marker.
DATA_MAX_BYTES = 8192


#: The process's redaction rule (``events.redact``), set once at start by :func:`set_redaction`.
_redactor = Redactor()


def set_redaction(patterns: Iterable[str]) -> None:
    """Use ``patterns`` (whole words, see :mod:`iii_console.core.redact`) for every event this process encodes."""
    global _redactor
    _redactor = Redactor(patterns)


def redact(value: Any) -> Any:
    """Replace values under secret-looking keys, at any depth, and credentials inside strings."""
    return _redactor(value)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True, unsafe_hash=True)
class Event:
    """One event. Never changed once made (by convention: a frozen dataclass costs
    three times as much to build, and a processed message builds two)."""

    type: str
    ts: int = field(default_factory=now_ms)
    trace_id: str = ""
    message_id: str | None = None
    step: str | None = None
    topic: str | None = None
    queue: str | None = None
    attempt: int | None = None
    worker: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    data: Any = None
    #: Stream entry id once read back from Redis; empty before it is written.
    id: str = ""

    def encode(self) -> dict[str, str]:
        """Flatten to stream fields; ``None`` fields are omitted to keep entries small."""
        flat = self.flat()
        return dict(zip(flat[::2], flat[1::2]))

    def flat(self) -> list[str]:
        """The stream fields as ``[name, value, name, value, ...]`` (what ``XADD`` takes).

        A field is left out when it is ``None`` or empty; a value that is not text is
        written with ``str``. Spelled out field by field (not a loop over the names with
        ``getattr``): every event is flattened once on its way to the stream, and this is
        a third of the time of the loop.
        """
        v: Any = self.ts
        out = ["type", self.type, "ts", v if v.__class__ is str else str(v)] if v is not None and v != "" else ["type", self.type]
        v = self.trace_id
        if v is not None and v != "":
            out += ("trace_id", v if v.__class__ is str else str(v))
        v = self.message_id
        if v is not None and v != "":
            out += ("message_id", v if v.__class__ is str else str(v))
        v = self.step
        if v is not None and v != "":
            out += ("step", v if v.__class__ is str else str(v))
        v = self.topic
        if v is not None and v != "":
            out += ("topic", v if v.__class__ is str else str(v))
        v = self.queue
        if v is not None and v != "":
            out += ("queue", v if v.__class__ is str else str(v))
        v = self.attempt
        if v is not None and v != "":
            out += ("attempt", v if v.__class__ is str else str(v))
        v = self.worker
        if v is not None and v != "":
            out += ("worker", v if v.__class__ is str else str(v))
        v = self.duration_ms
        if v is not None and v != "":
            out += ("duration_ms", v if v.__class__ is str else str(v))
        v = self.error
        if v is not None and v != "":
            # An exception's text can carry a URL with its password.
            out += ("error", _redactor.scrub(v if v.__class__ is str else str(v)))
        if self.data is not None:
            out += ("data", encode_data(self.data))
        return out

    @classmethod
    def decode(cls, entry_id: str | bytes, raw: Mapping[Any, Any]) -> Event:
        """Build an event from a stream entry; raises :class:`DecodeError` on a foreign entry."""
        try:
            f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
            data = load_data(f["data"]) if "data" in f else None
            return cls(
                type=f["type"],
                ts=int(f.get("ts", 0)),
                trace_id=f.get("trace_id", ""),
                message_id=f.get("message_id"),
                step=f.get("step"),
                topic=f.get("topic"),
                queue=f.get("queue"),
                attempt=int(f["attempt"]) if "attempt" in f else None,
                worker=f.get("worker"),
                duration_ms=float(f["duration_ms"]) if "duration_ms" in f else None,
                error=f.get("error"),
                data=data,
                id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            )
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"not an iii event: {entry_id!r}: {exc}") from exc

    def as_dict(self) -> dict[str, Any]:
        """The set fields, shallow (``asdict`` would deep-copy ``data`` for every echoed event)."""
        out = {}
        for name in _ALL_FIELDS:
            v = getattr(self, name)
            if v is not None and v != "":
                out[name] = v
        return out


EVENT_FIELDS = tuple(f.name for f in fields(Event) if f.name != "id")
_ALL_FIELDS = tuple(f.name for f in fields(Event))


def order_key(event: Event) -> tuple[int, int, int]:
    """Sort key of events read back: time, then stream order (entry ids compared as numbers, not text).

    As text, ``…-10`` sorts before ``…-9``: a trace with ten or more entries in one
    millisecond would show out of order.
    """
    ms, _, seq = event.id.partition("-")
    try:
        return event.ts, int(ms or 0), int(seq or 0)
    except ValueError:
        return event.ts, 0, 0


def _finite(value: Any) -> Any:
    """``value`` with NaN and the infinities as strings: strict JSON parsers (jq) refuse them as numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


#: What an event's data and an echoed line are written with. ``json.dumps`` given any
#: argument builds a new encoder on every call, half its cost for an event's data; the
#: encoder for these arguments is built once (same class, same options, same output).
_COMPACT = {"default": str, "separators": (",", ":")}
_COMPACT_STRICT = json.JSONEncoder(allow_nan=False, **_COMPACT)  # type: ignore[arg-type]


_decode_json = msgspec.json.decode


def load_data(text: str | bytes) -> Any:
    """An entry's ``data``: msgspec (a tenth of ``json.loads``'s time, and it shares the text of dict
    keys across calls: the same few names in every event) for what it reads, ``json.loads`` for the
    rest (``NaN``, ``Infinity``, numbers past a float, lone surrogates), so the value is what
    ``json.loads`` gives."""
    try:
        return _decode_json(text)
    except msgspec.MsgspecError:
        return json.loads(text)


def dumps_strict(value: Any, **kw: Any) -> str:
    """JSON with no ``NaN``/``Infinity`` (written as strings instead), which every JSON parser reads."""
    encode = _COMPACT_STRICT.encode if kw == _COMPACT else functools.partial(json.dumps, allow_nan=False, **kw)
    try:
        return encode(value)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        return encode(_finite(value))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise ValueError(f"number {text[:40]} is out of range")
    return f


def loads_finite(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and numbers too large for a float (``ValueError``).

    msgspec reads it first (several times faster, and strict the same way: it accepts what this
    accepts and gives the same value); whatever it refuses is read again by ``json`` for the
    error this raises (``json.JSONDecodeError`` with line and column, ``ValueError``,
    ``RecursionError``) or, for the few texts ``json`` takes and msgspec does not (a lone
    surrogate escape), the value.
    """
    try:
        return _decode_json(text)
    except (msgspec.MsgspecError, UnicodeError, RecursionError):
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


#: msgspec's JSON encoder: for plain data (``Redactor.plain_copy``) the bytes ``json.dumps`` writes, at a tenth of the time.
_encode_plain = msgspec.json.Encoder().encode


def encode_data(data: Any) -> str:
    try:
        value, plain = _redactor.plain_copy(data)
        text = _encode_plain(value).decode("ascii") if plain else dumps_strict(value, default=str, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        # Non-str keys or a cycle: keep the event (encoding runs on the sink's thread, which must not die).
        text = json.dumps({"unencodable": True, "error": f"{type(exc).__name__}: {exc}"[:500]})
    if len(text) > DATA_MAX_BYTES:
        text = json.dumps({"truncated": True, "bytes": len(text), "preview": text[: DATA_MAX_BYTES // 2]})
    return text
