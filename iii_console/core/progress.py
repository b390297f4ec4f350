"""``ctx.progress(done, total, note=None)``: how far a handler has got.

Each call keeps the latest value per trace in Redis (``{prefix}progress:{trace}``,
JSON, kept 24 h after the last call) and writes a ``progress`` event, in one
script call (``lua/progress.lua``), so the value and its event never disagree.
"""

from __future__ import annotations

import json
from typing import Any

from iii_console.core.emitter import Emitter
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys
from iii_console.core.luasrc import core_script

_SCRIPT = core_script("progress")
#: How long a trace's latest progress is kept after its last update.
PROGRESS_TTL_MS = 86_400_000
NOTE_MAX = 500
#: Largest ``total`` (and so ``done``): exact as a JSON number in every reader, the browser's included.
PROGRESS_MAX = 2**53


def progress_value(done: Any, total: Any, note: Any = None) -> dict[str, Any]:
    """The checked value of one progress call (``ValueError``/``TypeError`` naming the argument)."""
    for name, v in (("done", done), ("total", total)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise TypeError(f"ctx.progress: {name} must be a number, not {v!r}")
    if total <= 0:
        raise ValueError(f"ctx.progress: total must be > 0, not {total!r}")
    if total > PROGRESS_MAX:
        raise ValueError(f"ctx.progress: total must be at most 2**53 ({PROGRESS_MAX}), not {total!r}")
    if not 0 <= done <= total:
        raise ValueError(f"ctx.progress: done must be between 0 and total ({total!r}), not {done!r}")
    if note is not None and not isinstance(note, str):
        raise TypeError(f"ctx.progress: note must be a string or None, not {type(note).__name__}")
    out: dict[str, Any] = {"done": done, "total": total, "percent": round(100.0 * done / total, 1)}
    if note:
        out["note"] = note[:NOTE_MAX]
    return out


def read_progress(client: Any, keys: Keys, trace_id: str) -> dict[str, Any] | None:
    """The latest progress of ``trace_id``, or None."""
    raw = client.get(keys.progress(trace_id))
    return json.loads(raw) if raw else None


class _Base:
    def __init__(self, keys: Keys, emitter: Emitter):
        self.keys = keys
        self.emitter = emitter

    def _shape(
        self, done: Any, total: Any, note: Any, *, trace_id: str, step: str, message_id: str | None
    ) -> tuple[list[Any], Any]:
        value = progress_value(done, total, note)
        record = {**value, "step": step, "message_id": message_id, "ts": now_ms()}
        event = self.emitter.make("progress", trace_id=trace_id, step=step, message_id=message_id, data=value)
        return [self.keys.progress(trace_id), json.dumps(record, separators=(",", ":")), PROGRESS_TTL_MS], event


class ProgressStore(_Base):
    def __init__(self, client: Any, keys: Keys, emitter: Emitter):
        super().__init__(keys, emitter)
        self._script = client.register_script(_SCRIPT)

    def report(self, done: Any, total: Any, note: Any = None, *, trace_id: str, step: str, message_id: str | None = None) -> None:
        args, event = self._shape(done, total, note, trace_id=trace_id, step=step, message_id=message_id)
        self.emitter.transition(lambda ev: self._script(args=[*args, ev]), event)


class AsyncProgressStore(_Base):
    def __init__(self, client: Any, keys: Keys, emitter: Emitter):
        super().__init__(keys, emitter)
        self._script = client.register_script(_SCRIPT)

    async def report(
        self, done: Any, total: Any, note: Any = None, *, trace_id: str, step: str, message_id: str | None = None
    ) -> None:
        args, event = self._shape(done, total, note, trace_id=trace_id, step=step, message_id=message_id)
        # On a loop the script does not wait for the event buffer (see docs/guarantees.md): events this
        # task put before it (the run's start, its log lines) may land after it.
        stream = self.emitter.stream
        await self._script(args=[*args, stream.payload((), [event]) if stream is not None else ""])
