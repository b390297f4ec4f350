"""A worker's queue of fetched messages, handed from its consumer threads to its worker threads.

Dramatiq's ``Worker`` keeps the messages its consumers fetched in a ``queue.PriorityQueue``
that its worker threads take from with ``get(timeout=...)``. That queue is written in
Python on a ``threading.Condition``: each ``get`` that waits allocates a lock, and a thread
woken by a ``put`` must then take the queue's mutex back, which the consumer thread often
still holds, so it parks again. At eight threads draining a queue this was a tenth of the
worker's GIL time (py-spy ``--gil``: ``Condition.wait`` and ``Condition.notify``).

:class:`WorkQueue` does the same job with the waiting done in C: a ``queue.SimpleQueue`` of
tokens, one per message put, on which idle worker threads block, and a heap of the
messages under a plain lock held only to push or pop. A thread that took a token takes the
first message on the heap (not necessarily the one its token came with: there is one
message per token, so the heap is never empty then). The order is Dramatiq's: lowest
``priority`` first (the actor's priority), first in first out within one. ``task_done``,
``join`` and ``unfinished_tasks`` behave as ``queue.Queue``'s (``Worker.join`` uses them),
and ``get_nowait`` raises ``queue.Empty`` (``Worker.stop`` drains the queue with it).
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
from typing import Any


class WorkQueue:
    """A drop-in for the ``PriorityQueue`` a ``dramatiq.Worker`` hands its threads (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[int, int, Any]] = []
        self._order = itertools.count()
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.unfinished_tasks = 0
        self._all_done = threading.Condition(self._lock)
        self._joining = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item`` (a Dramatiq work item: its ``priority`` orders it); never blocks (unbounded)."""
        with self._lock:
            heapq.heappush(self._heap, (item.priority, next(self._order), item))
            self.unfinished_tasks += 1
        self._tokens.put(None)

    def put_nowait(self, item: Any) -> None:
        self.put(item, False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The first item by priority, waiting up to ``timeout`` for one; ``queue.Empty`` if none came."""
        self._tokens.get(block, timeout)
        with self._lock:
            return heapq.heappop(self._heap)[2]

    def get_nowait(self) -> Any:
        return self.get(False)

    def task_done(self) -> None:
        with self._lock:
            if self.unfinished_tasks <= 0:
                raise ValueError("task_done() called too many times")
            self.unfinished_tasks -= 1
            if self.unfinished_tasks == 0 and self._joining:
                self._all_done.notify_all()

    def join(self) -> None:
        """Wait until every item put has been marked done."""
        with self._lock:
            self._joining += 1
            try:
                while self.unfinished_tasks:
                    self._all_done.wait()
            finally:
                self._joining -= 1

    def qsize(self) -> int:
        return len(self._heap)

    def empty(self) -> bool:
        return not self._heap

    def full(self) -> bool:
        return False
