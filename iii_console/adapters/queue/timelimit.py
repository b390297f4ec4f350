"""Per-queue time limits on handlers: one monitor thread per worker process.

Past ``soft_time_limit_ms`` the handler's thread gets ``SoftTimeLimitExceeded``
(it may catch it to clean up); past ``time_limit_ms`` it gets
``TimeLimitExceeded`` and the attempt fails, whether or not the handler catches
it, so the queue's retry strategy applies. Both are raised the way Dramatiq's
``TimeLimit`` middleware does it: an asynchronous exception set on the thread
(``PyThreadState_SetAsyncExc``), delivered as soon as the thread runs Python
code again. An ``async def`` handler's thread waits in short slices
(``LoopThread.run``), receives it there and cancels the coroutine.

A thread blocked inside a C call (a socket read without a timeout, a long
``time.sleep``, a C library) runs no Python code and never sees the exception.
If the handler is still running ``STUCK_GRACE_S`` after its hard limit, the
monitor hands it to ``on_stuck``: the worker process is recycled (the other
handlers finish, the stuck one's message goes back to its queue) and the
message is redelivered, which counts as a delivery toward ``max_deliveries``.

The exception can only be delivered while the handler is registered: the entry
is removed, and any exception still pending is cleared, under the monitor's
lock before :meth:`TimeLimits.call` returns, so it never lands in Dramatiq's
own code.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iii_console.core.errors import SoftTimeLimitExceeded, TimeLimitExceeded

log = logging.getLogger(__name__)

#: How long a handler may keep running after its hard limit before it is
#: considered stuck in a call that ignores the exception.
STUCK_GRACE_S = 2.0

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


def _raise_in(tid: int, exc_type: type[BaseException] | None) -> None:
    """Set (or, with ``None``, clear) the pending asynchronous exception of thread ``tid``."""
    _set_async_exc(ctypes.c_ulong(tid), ctypes.py_object(exc_type) if exc_type is not None else None)


@dataclass(slots=True)
class Running:
    """One handler run under a limit."""

    tid: int
    topic: str
    message_id: str
    queue: str
    redis_message_id: str
    soft_ms: int
    hard_ms: int
    soft_at: float | None
    hard_at: float | None
    attempt: int | None = None
    trace_id: str = ""
    started: float = 0.0
    #: "soft" or "hard": the last limit raised in the thread.
    fired: str | None = None
    stuck: bool = False

    def next_due(self, grace_s: float) -> float | None:
        if self.stuck:
            return None
        if self.fired is None and self.soft_at is not None:
            return self.soft_at
        if self.fired != "hard" and self.hard_at is not None:
            return self.hard_at
        return self.hard_at + grace_s if self.hard_at is not None else None


class TimeLimits:
    """Enforces ``limits(topic) -> (soft_ms, hard_ms)`` on handlers run through :meth:`call`."""

    def __init__(
        self,
        limits: Callable[[str], tuple[int, int]],
        on_stuck: Callable[[Running], None],
        *,
        grace_s: float = STUCK_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = limits
        self.on_stuck = on_stuck
        self.grace_s = grace_s
        self.clock = clock
        self._cond = threading.Condition()
        self._running: dict[int, Running] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        #: When the monitor will next wake by itself; an entry due earlier wakes it.
        self._wake_at = float("inf")
        #: Handlers found stuck; their messages are returned when the process stops.
        self.stuck: list[Running] = []

    # -- the handler's side ------------------------------------------------
    def call(
        self,
        fn: Callable[[], Any],
        *,
        topic: str,
        message_id: str,
        queue: str,
        redis_message_id: str,
        attempt: int | None = None,
        trace_id: str = "",
    ) -> Any:
        soft_ms, hard_ms = self.limits(topic)
        if not soft_ms and not hard_ms:
            return fn()
        now = self.clock()
        entry = Running(
            threading.get_ident(),
            topic,
            message_id,
            queue,
            redis_message_id,
            soft_ms,
            hard_ms,
            now + soft_ms / 1000 if soft_ms else None,
            now + hard_ms / 1000 if hard_ms else None,
            attempt,
            trace_id,
            now,
        )
        self._add(entry)
        try:
            try:
                result = fn()
            finally:
                self._remove(entry)
        except TimeLimitExceeded as exc:
            self._remove(entry)  # again, if the exception arrived inside the first removal
            if str(exc):
                raise
            raise self._described(type(exc), entry).with_traceback(exc.__traceback__) from None
        if entry.fired == "hard":
            # It caught the exception and returned anyway: the attempt still failed.
            raise self._described(TimeLimitExceeded, entry)
        return result

    def _described(self, kind: type[TimeLimitExceeded], entry: Running) -> TimeLimitExceeded:
        if issubclass(kind, SoftTimeLimitExceeded):
            return SoftTimeLimitExceeded(f"handler ran past queues.{entry.topic}.soft_time_limit_ms ({entry.soft_ms} ms)")
        return TimeLimitExceeded(f"handler ran past queues.{entry.topic}.time_limit_ms ({entry.hard_ms} ms)")

    def _add(self, entry: Running) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._monitor, name="iii-time-limits", daemon=True)
                self._thread.start()
            self._running[entry.tid] = entry
            due = entry.next_due(self.grace_s)
            if due is not None and due < self._wake_at:
                # Only then: at thousands of messages a second under a long limit the monitor sleeps on.
                self._wake_at = due
                self._cond.notify()

    def _remove(self, entry: Running) -> None:
        with self._cond:
            if self._running.get(entry.tid) is entry:
                del self._running[entry.tid]
            # Under the lock the monitor raises with: once cleared here nothing can be pending.
            if entry.fired is not None:
                _raise_in(entry.tid, None)

    # -- the monitor --------------------------------------------------------
    def _monitor(self) -> None:
        while True:
            stuck: list[Running] = []
            with self._cond:
                if self._closed:
                    return
                now = self.clock()
                wait: float | None = None
                for entry in list(self._running.values()):
                    due = entry.next_due(self.grace_s)
                    while due is not None and due <= now:
                        self._fire(entry, stuck)
                        due = entry.next_due(self.grace_s)
                    if due is not None:
                        wait = due - now if wait is None else min(wait, due - now)
                if not stuck:
                    self._wake_at = now + wait if wait is not None else float("inf")
                    self._cond.wait(wait)
            for entry in stuck:
                try:
                    self.on_stuck(entry)
                except Exception:  # the monitor must outlive a failing callback
                    log.exception("handling the stuck handler of message %s failed", entry.message_id)

    def _fire(self, entry: Running, stuck: list[Running]) -> None:
        if entry.fired is None and entry.soft_at is not None:
            entry.fired = "soft"
            _raise_in(entry.tid, SoftTimeLimitExceeded)
        elif entry.fired != "hard" and entry.hard_at is not None:
            entry.fired = "hard"
            _raise_in(entry.tid, TimeLimitExceeded)
        else:
            entry.stuck = True
            self.stuck.append(entry)
            stuck.append(entry)

    def detach_stuck(self, workers: Any) -> list[Running]:
        """Take stuck threads out of Dramatiq ``Worker``s about to stop, so their drain does not
        wait for threads that will never finish; returns the stuck runs."""
        with self._cond:
            stuck = list(self.stuck)
        tids = {e.tid for e in stuck}
        if tids:
            for w in workers:
                w.workers = [t for t in w.workers if t.ident not in tids]
        return stuck

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
