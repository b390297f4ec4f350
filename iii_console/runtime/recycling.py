"""When a worker process should be replaced: recycling policy and the exit code that says so.

A process is recycled once it has settled ``workers.max_messages_per_process``
messages, once its resident memory passes ``workers.max_memory_mb``, or when a
handler ignored its time limit (stuck in a C call). It then stops like on
SIGTERM (running handlers finish, prefetched messages go back to their
queues), reports ``worker.stopped`` with ``reason: recycled`` and the cause,
and exits with :data:`RECYCLE_EXIT`; the supervisor starts its replacement at
once, without the backoff it applies to crashes.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
from dramatiq.common import q_name

from iii_console.adapters.queue.names import parse_queue
from iii_console.adapters.queue.timelimit import Running, TimeLimits

log = logging.getLogger(__name__)

#: Exit status of a worker process that asks to be replaced (``EX_TEMPFAIL``).
RECYCLE_EXIT = 75
#: Resident memory is read at most this often (after a message settles) while below 80 % of the limit.
RSS_EVERY_S = 0.05

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class Recycler(dramatiq.Middleware):
    """Counts settled messages and watches RSS; ``requested`` is set once the process should go.

    ``requested`` doubles as the process's stop event (SIGTERM sets it too), so a
    recycle starts draining at once; ``cause`` tells the two apart.
    """

    def __init__(
        self,
        *,
        max_messages: int = 0,
        max_memory_mb: int = 0,
        rss: Callable[[], int] = rss_bytes,
        clock: Callable[[], float] = time.monotonic,
        on_request: Callable[[], None] = lambda: None,
    ):
        self.max_messages = max_messages
        self.max_memory_mb = max_memory_mb
        self.rss = rss
        self.clock = clock
        #: Called once, on the first request: the process stops taking new messages at once.
        self.on_request = on_request
        self.settled = 0
        self.requested = threading.Event()
        self.cause: str | None = None
        self.detail = ""
        self._lock = threading.Lock()
        self._rss_read = float("-inf")
        self._rss_mb = 0.0
        self.rss_at_start_mb = rss() / 2**20 if max_memory_mb else 0.0

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        with self._lock:
            self.settled += 1
            settled = self.settled
        if self.max_messages and settled >= self.max_messages:
            self.request(
                "max_messages_per_process", f"settled {settled} messages (workers.max_messages_per_process: {self.max_messages})"
            )
        if self.max_memory_mb:
            now = self.clock()
            # Near the limit, after every message; below, at most every RSS_EVERY_S.
            if self._rss_mb > 0.8 * self.max_memory_mb or now - self._rss_read >= RSS_EVERY_S:
                self._rss_read = now
                mb = self._rss_mb = self.rss() / 2**20
                if mb > self.max_memory_mb:
                    self.request(
                        "max_memory_mb",
                        f"resident memory {mb:.0f} MiB after {settled} messages (workers.max_memory_mb: {self.max_memory_mb})",
                    )

    def request(self, cause: str, detail: str) -> None:
        """Ask for this process to be replaced; the first cause wins."""
        with self._lock:
            first = self.cause is None
            if first:
                self.cause, self.detail = cause, detail
        if first:
            self.on_request()
        self.requested.set()

    def stop_data(self) -> dict[str, Any]:
        """What ``worker.stopped`` reports about why the process stops."""
        if self.cause is None:
            return {"reason": "shutdown"}
        return {
            "reason": "recycled",
            "cause": self.cause,
            "detail": self.detail,
            "messages": self.settled,
            "rss_mb": round(self.rss() / 2**20, 1),
        }

    @property
    def exit_code(self) -> int:
        return RECYCLE_EXIT if self.cause is not None else 0


def stop_intake(workers: Iterable[dramatiq.Worker]) -> None:
    """About to be recycled: each worker thread finishes the message it runs and takes no
    other (what was prefetched goes back to the queues when the process stops)."""
    for w in list(workers):
        for thread in list(w.workers):
            thread.stop()


def report_stuck(run: Running, limits: TimeLimits, recycler: Recycler, emitter: Any) -> None:
    """A handler ignored its hard time limit (blocked in a C call): report the failed run on
    its message's trace and ask for this process to be recycled."""
    try:
        _topic, step, _ = parse_queue(run.queue)
    except ValueError:
        step = None
    emitter.emit(
        "message.failed",
        message_id=run.message_id,
        **({"trace_id": run.trace_id} if run.trace_id else {}),
        step=step,
        topic=run.topic,
        queue=q_name(run.queue),
        attempt=run.attempt,
        duration_ms=round((limits.clock() - run.started) * 1000, 3),
        error=(
            f"TimeLimitExceeded: handler ran past queues.{run.topic}.time_limit_ms ({run.hard_ms} ms) and did not "
            f"stop within {limits.grace_s:g} s (blocked in a call that ignores it); its worker process is recycled "
            "and the message redelivered"
        ),
        data={"stuck": True},
    )
    recycler.request(
        "time_limit",
        f"the handler of message {run.message_id} on {run.queue} ignored queues.{run.topic}.time_limit_ms ({run.hard_ms} ms)",
    )
