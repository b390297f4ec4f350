"""The dead-letter store: per named DLQ, every message that ran out of retries.

Entries are written by the queue adapter in the same atomic Redis step that
removes the message from its queue (so a message is in exactly one place), and
kept until purged. Each entry keeps what a person needs to decide what to do:
payload, error, traceback, attempts, first and last failure, trace id, and the
original message for replay.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import redis

from iii_console.core.errors import DecodeError
from iii_console.core.keys import Keys


@dataclass(frozen=True)
class DeadLetter:
    id: str
    dlq: str
    error: str
    traceback: str = ""
    topic: str | None = None
    step: str | None = None
    queue: str | None = None
    message_id: str | None = None
    trace_id: str = ""
    data: Any = None
    attempts: int = 0
    first_failure_ms: int = 0
    last_failure_ms: int = 0
    priority: str = "normal"
    #: The original encoded message (dict) for replay; absent for undecodable input.
    message: dict[str, Any] | None = None
    #: Raw bytes (as text, replacement chars for invalid UTF-8) of an undecodable message.
    raw: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps(asdict(self), default=str, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> DeadLetter:
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"not a dead-letter entry: {exc}") from exc


class DeadLetterStore:
    """Read side of the DLQ (the write is part of the broker's atomic ack)."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.client = client
        self.keys = keys

    def names(self) -> list[str]:
        return sorted(n.decode() if isinstance(n, bytes) else n for n in self.client.smembers(self.keys.dlq_names))

    def count(self, name: str) -> int:
        return int(self.client.zcard(self.keys.dlq(name)))

    def list(self, name: str | None = None, *, limit: int | None = None) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for n in [name] if name else self.names():
            ids = self.client.zrevrange(self.keys.dlq(n), 0, -1 if limit is None else limit - 1)
            if ids:
                out.extend(DeadLetter.decode(v) for v in self.client.hmget(self.keys.dlq_entries(n), ids) if v)
        out.sort(key=lambda e: e.last_failure_ms, reverse=True)
        return out[:limit] if limit else out

    def get(self, entry_id: str) -> DeadLetter | None:
        for n in self.names():
            v = self.client.hget(self.keys.dlq_entries(n), entry_id)
            if v:
                return DeadLetter.decode(v)
        return None

    def matching(self, prefix: str, *, limit: int = 20) -> builtins.list[str]:
        """Entry ids that start with ``prefix`` (sorted, at most ``limit``), as git takes a short hash.

        A listing cut to the width of a terminal shows ``04f9308c-92…``; what was copied
        from it still names one entry when no other id starts the same way.
        """
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        found: set[str] = set()
        for n in self.names():
            for entry_id, _ in self.client.hscan_iter(self.keys.dlq_entries(n), match=pattern, count=1000):
                found.add(entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
                if len(found) > limit:
                    break
        return sorted(found)[:limit]

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.list())

    def purge_before(self, before_ms: int, name: str | None = None, *, batch: int = 500) -> int:
        """Delete the entries (of dead-letter queue ``name``, or of every one) whose last failure
        is before ``before_ms`` (epoch ms), ``batch`` at a time; returns how many went.

        For retention sweeps written as steps (``ctx.dead_letters``); ``dead_letter_ttl`` does
        the same per topic from the config.
        """
        gone = 0
        for n in [name] if name else self.names():
            while True:
                ids = self.client.zrangebyscore(self.keys.dlq(n), "-inf", f"({int(before_ms)}", start=0, num=batch)
                if not ids:
                    break
                pipe = self.client.pipeline()
                pipe.hdel(self.keys.dlq_entries(n), *ids)
                pipe.zrem(self.keys.dlq(n), *ids)
                gone += int(pipe.execute()[1])
        return gone


class AsyncDeadLetters:
    """``ctx.dead_letters`` of ``async def`` handlers: the store's methods, awaited (run in a thread)."""

    def __init__(self, store: DeadLetterStore):
        self.store = store

    async def list(self, name: str | None = None, *, limit: int | None = None) -> builtins.list[DeadLetter]:
        return await asyncio.to_thread(lambda: self.store.list(name, limit=limit))

    async def count(self, name: str) -> int:
        return await asyncio.to_thread(self.store.count, name)

    async def names(self) -> builtins.list[str]:
        return await asyncio.to_thread(self.store.names)

    async def purge_before(self, before_ms: int, name: str | None = None, *, batch: int = 500) -> int:
        return await asyncio.to_thread(lambda: self.store.purge_before(before_ms, name, batch=batch))


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries a bulk action touches. Empty fields match everything."""

    queue: str | None = None
    """A dead-letter queue name or a topic."""
    step: str | None = None
    error: str | None = None
    """Case-insensitive substring of the error."""
    since_ms: int | None = None
    """Only entries whose last failure is at or after this time."""

    def matches(self, e: DeadLetter) -> bool:
        if self.queue and self.queue not in (e.dlq, e.topic):
            return False
        if self.step and self.step != e.step:
            return False
        if self.error and self.error.lower() not in (e.error or "").lower():
            return False
        return not (self.since_ms is not None and e.last_failure_ms < self.since_ms)


def select(store: DeadLetterStore, flt: DeadLetterFilter) -> list[DeadLetter]:
    return [e for e in store.list() if flt.matches(e)]


def purge(store: DeadLetterStore, entries: list[DeadLetter]) -> int:
    """Delete exactly these entries; returns how many were still there."""
    pipe = store.client.pipeline()
    for e in entries:
        pipe.hdel(store.keys.dlq_entries(e.dlq), e.id)
        pipe.zrem(store.keys.dlq(e.dlq), e.id)
    res = pipe.execute() if entries else []
    return sum(int(x) for x in res[0::2])


def expire(
    store: DeadLetterStore,
    ttl_ms: Any,
    now_ms: int,
    *,
    shortest_ms: int,
    batch: int = 500,
    pages: int = 4,
    cursor: dict[str, int] | None = None,
) -> int:
    """Delete entries older than their topic's ``dead_letter_ttl`` (``ttl_ms(topic)``, None = kept).

    Only entries older than ``shortest_ms`` (the shortest TTL configured) are read, oldest
    first, at most ``pages`` pages of ``batch`` per dead-letter queue and call. With
    ``cursor`` (kept by the caller between calls) each call goes on where the last one
    stopped and starts over at the oldest once it has read them all: entries that stay
    (a topic without a TTL, or with a longer one, sharing the queue) cannot hide the ones
    behind them. Returns how many were deleted.
    """
    gone: list[DeadLetter] = []
    for name in store.names():
        start = cursor.get(name, 0) if cursor is not None else 0
        key, entries = store.keys.dlq(name), store.keys.dlq_entries(name)
        read = deleted = 0
        at_end = False
        for _ in range(pages):
            ids = store.client.zrangebyscore(key, "-inf", now_ms - shortest_ms, start=start + read, num=batch)
            read += len(ids)
            for raw in store.client.hmget(entries, ids) if ids else ():
                if not raw:
                    continue
                try:
                    e = DeadLetter.decode(raw)
                except Exception:
                    continue
                ttl = ttl_ms(e.topic or "")
                if ttl is not None and e.last_failure_ms <= now_ms - ttl:
                    gone.append(e)
                    deleted += 1
            if len(ids) < batch:
                at_end = True
                break
        if cursor is not None:
            # The entries deleted now were among those read: the next unread one moves up by as many.
            cursor[name] = 0 if at_end else start + read - deleted
    return purge(store, gone) if gone else 0


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")


def parse_since(text: str, now_ms: int) -> int:
    """``30s``, ``10m``, ``2h``, ``7d`` (ago) or an ISO 8601 time -> epoch ms."""
    m = _DURATION.match(text.strip())
    if m:
        factor = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now_ms - int(float(m.group(1)) * factor * 1000)
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30s, 10m, 2h, 7d) nor an ISO time") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1000)
