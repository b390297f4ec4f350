"""The lifecycle event record: one entry on the Redis event stream.

Events are frozen and flat so that a stream entry maps 1:1 to a record and the
console can decode them without knowing who wrote them. ``data`` is the only
nested field; it is JSON, size-capped and redacted at encode time.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from iii_console.core.errors import DecodeError

#: Every event type the runtime emits, in the order of a message's life.
EVENT_TYPES = (
    "http.received",
    "message.enqueued",
    "message.started",
    "message.processed",
    "message.failed",
    "message.retrying",
    "message.dead_lettered",
    "message.replayed",
    "message.redelivered",
    "message.deduplicated",
    "message.throttled",
    "group.completed",
    "state.changed",
    "notification.sent",
    "progress",
    "cron.fired",
    "cron.skipped",
    "worker.started",
    "worker.heartbeat",
    "worker.stopped",
    "log",
    "step.error",
    "config.reloaded",
)

#: Largest encoded ``data`` kept on the stream; bigger payloads are truncated with a marker.
DATA_MAX_BYTES = 8192

_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|authorization|api[_-]?key|cookie|credential", re.I)
REDACTED = "[redacted]"

_SCALARS = ("type", "ts", "trace_id", "message_id", "step", "topic", "queue", "attempt", "worker", "duration_ms", "error")


#: Key -> is it secret-looking. Payload keys repeat endlessly ("id", "text",
#: "status"), so the regex runs once per distinct key, not once per event.
_secret_keys: dict[str, bool] = {}


def _is_secret(k: Any) -> bool:
    if not isinstance(k, str):
        return False
    hit = _secret_keys.get(k)
    if hit is None:
        hit = _SECRET_KEY.search(k) is not None
        if len(_secret_keys) < 10_000:
            _secret_keys[k] = hit
    return hit


def redact(value: Any) -> Any:
    """Replace values under secret-looking keys, at any depth, so payloads can be shown safely."""
    if isinstance(value, Mapping):
        # Scalars are kept as they are without a call per value: this runs for every event.
        return {k: (REDACTED if _is_secret(k) else redact(v) if isinstance(v, (Mapping, list, tuple)) else v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Event:
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
        """The stream fields as ``[name, value, name, value, ...]`` (what ``XADD`` takes)."""
        out: list[str] = []
        for name in _SCALARS:
            v = getattr(self, name)
            if v is not None and v != "":
                out += (name, v if isinstance(v, str) else str(v))
        if self.data is not None:
            out += ("data", encode_data(self.data))
        return out

    @classmethod
    def decode(cls, entry_id: str | bytes, raw: Mapping[Any, Any]) -> "Event":
        """Build an event from a stream entry; raises :class:`DecodeError` on a foreign entry."""
        try:
            f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
            data = json.loads(f["data"]) if "data" in f else None
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


def encode_data(data: Any) -> str:
    try:
        text = json.dumps(redact(data), default=str, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        # Non-str keys or a cycle: keep the event (encoding runs on the sink's thread, which must not die).
        text = json.dumps({"unencodable": True, "error": f"{type(exc).__name__}: {exc}"[:500]})
    if len(text) > DATA_MAX_BYTES:
        text = json.dumps({"truncated": True, "bytes": len(text), "preview": text[: DATA_MAX_BYTES // 2]})
    return text
