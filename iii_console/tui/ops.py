"""The console's write side: replay, purge and state edits.

Each goes through the same core code as ``iii-console dlq`` and ``iii-console
state``: replay is the one atomic ``Replayer`` move that emits
``message.replayed``, purge deletes exactly the given entries, and a state edit
is an ordinary compare-and-set change (a ``state.changed`` event, triggers fire).
Nothing here knows about Textual: the app calls it from a worker thread, and
never while it is read-only, so a read-only console sends Redis no write at all.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from iii_console.core.dlq import DeadLetter, DeadLetterStore, purge
from iii_console.core.emitter import Emitter, StreamSink
from iii_console.core.keys import Keys
from iii_console.core.replay import Replayer, ReplayError
from iii_console.core.state import StateStore
from iii_console.tui.source import connect


@dataclass(frozen=True)
class ReplayResult:
    #: (entry id, new message id) of each entry put back on its queue.
    replayed: list[tuple[str, str]] = field(default_factory=list)
    #: Why each other entry was left alone (already gone, undecodable).
    skipped: list[str] = field(default_factory=list)


class Writer:
    """Opens a short-lived connection per action, so an idle console holds no write connection."""

    def __init__(
        self, redis_url: str, keys: Keys, *, events_maxlen: int = 100_000, worker: str | None = None, broker: Any = None
    ):
        self.redis_url = redis_url
        self.keys = keys
        #: Replay and run-now on a broker other than Redis (``runtime.brokers.ConsoleBroker``, handed in
        #: by the command line), else ``None``: they write Redis through the core.
        self.broker = broker
        #: The deployment's ``events.maxlen``: the console's XADDs trim the stream to it, never shorter.
        self.events_maxlen = events_maxlen
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:console"

    @contextmanager
    def _client(self) -> Iterator[redis.Redis]:
        client = connect(self.redis_url)
        try:
            yield client
        finally:
            client.close()

    def replay(self, entries: Sequence[DeadLetter]) -> ReplayResult:
        out = ReplayResult()
        with self._client() as client:
            sink = StreamSink(client, self.keys.events, maxlen=self.events_maxlen, keys=self.keys)
            emitter = Emitter(sink.put, worker=self.worker)
            if self.broker is not None:
                replayer: Any = self.broker.replayer(client, self.keys, emitter)
            else:
                replayer = Replayer(client, self.keys, emitter)
            try:
                for e in entries:
                    try:
                        out.replayed.append((e.id, replayer.replay(e)))
                    except ReplayError as exc:
                        out.skipped.append(str(exc))
            finally:
                if self.broker is not None:
                    replayer.close()
                sink.close()  # the message.replayed events are on the stream before the console says "done"
        return out

    def purge(self, entries: Sequence[DeadLetter]) -> int:
        """How many of ``entries`` were still there (and are now gone)."""
        with self._client() as client:
            return purge(DeadLetterStore(client, self.keys), list(entries))

    def set_state(self, group: str, key: str, value: Any) -> None:
        with self._client() as client:
            self._store(client).set(group, key, value)

    def replace_state(self, group: str, key: str, expected: Any, value: Any) -> bool:
        """Write ``value`` only if the key still holds ``expected``; False (nothing written) if it changed."""
        with self._client() as client:
            return self._store(client).replace(group, key, expected, value)

    def delete_state(self, group: str, key: str) -> Any:
        """The old value, ``None`` if the key was already gone."""
        with self._client() as client:
            return self._store(client).delete(group, key)

    def run_cron(self, step: str, expression: str, priority: str = "normal") -> str:
        """Fire ``step``'s cron trigger now (marked manual); returns the message id."""
        from iii_console.core.cronrun import run_now

        with self._client() as client:
            sink = StreamSink(client, self.keys.events, maxlen=self.events_maxlen, keys=self.keys)
            try:
                if self.broker is not None:
                    _trace, mid = self.broker.run_cron(
                        client,
                        self.keys,
                        Emitter(sink.put, worker=self.worker),
                        step,
                        expression,
                        priority=priority,
                        source="console",
                    )
                else:
                    _trace, mid = run_now(
                        client,
                        self.keys,
                        Emitter(sink.put, worker=self.worker),
                        step,
                        expression,
                        priority=priority,
                        source="console",
                    )
            finally:
                sink.close()
        return mid

    def _store(self, client: redis.Redis) -> StateStore:
        # Each edit is its own trace, so the steps it triggers are followed like any other change.
        return StateStore(client, self.keys, trace_id=uuid.uuid4().hex, step="console", events_maxlen=self.events_maxlen)
