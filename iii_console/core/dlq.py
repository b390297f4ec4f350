"""The dead-letter store: per named DLQ, every message that ran out of retries.

Entries are written by the queue adapter in the same atomic Redis step that
removes the message from its queue (so a message is in exactly one place), and
kept until purged. Each entry keeps what a person needs to decide what to do:
payload, error, traceback, attempts, first and last failure, trace id, and the
original message for replay.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

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
    def decode(cls, raw: bytes | str) -> "DeadLetter":
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

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.list())
