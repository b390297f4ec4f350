"""The event echo: the stream, as it is written, handed to a callback (``iii-console``'s stdout).

It reads from where the stream stood when it was entered, in a thread of its
own: a slow reader of our stdout (a log shipper, a pager) then only delays this
thread; the server, scheduler and workers never wait on it, and the events are
in Redis regardless. Exited, it first waits for this process's buffered events
to be written, then reads to the end of the stream, so the last events of a
stop (the workers' ``worker.stopped``) are echoed before it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from iii_console.core.events import Event
from iii_console.core.keys import as_str
from iii_console.runtime.services import Services, redis_client


class EventEcho:
    """Calls ``on_event`` for every event written to the stream after it is entered."""

    def __init__(self, services: Services, on_event: Callable[[Event], None]) -> None:
        self.services = services
        self.on_event = on_event
        self._from = "0-0"
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EventEcho:
        last: Any = self.services.client.xrevrange(self.services.keys.events, count=1)
        self._from = as_str(last[0][0]) if last else "0-0"
        self._thread = threading.Thread(target=self._run, name="iii-tail", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.services.sink.flush()
        self._done.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        client = redis_client(self.services.config.redis.url, socket_timeout=5)
        last = self._from
        try:
            while True:
                try:
                    got: Any = client.xread({self.services.keys.events: last}, count=500, block=200)
                except redis.RedisError:
                    if self._done.is_set():
                        return
                    time.sleep(0.5)
                    continue
                for _stream, entries in got or []:
                    for entry_id, fields in entries:
                        last = as_str(entry_id)
                        self.on_event(Event.decode(entry_id, fields))
                flush = getattr(self.on_event, "flush", None)
                if got and flush is not None:
                    flush()  # once per batch read: a write per event would cost a syscall each
                if not got and self._done.is_set():
                    return
        finally:
            client.close()
