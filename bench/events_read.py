"""Reading our event stream back for timing: first timestamp per (trace, type)."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from iii_console.core.events import Event
from iii_console.core.keys import Keys

_KEYS = Keys()


def read_all(client: redis.Redis, keys: Keys = _KEYS, *, types: Iterable[str] | None = None, chunk: int = 5000) -> list[Event]:
    wanted = set(types) if types is not None else None
    out: list[Event] = []
    last = "-"
    while True:
        entries = client.xrange(keys.events, min=last, max="+", count=chunk)
        if last != "-" and entries:
            entries = entries[1:]
        if not entries:
            return out
        for entry_id, fields in entries:
            ev = Event.decode(entry_id, fields)
            if wanted is None or ev.type in wanted:
                out.append(ev)
        last = entries[-1][0].decode()


def first_ts(events: Iterable[Event]) -> dict[tuple[str, str], int]:
    """(trace id, type) -> the earliest ``ts`` (ms) of that type on that trace."""
    out: dict[tuple[str, str], int] = {}
    for ev in events:
        key = (ev.trace_id, ev.type)
        if key not in out or ev.ts < out[key]:
            out[key] = ev.ts
    return out
