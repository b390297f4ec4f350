"""The worker's queue of fetched messages (runtime/workqueue.py), with real threads."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import pytest

from iii_console.runtime.workqueue import WorkQueue


@dataclass
class Item:
    priority: int
    name: str


def test_items_come_out_by_priority_then_in_the_order_they_were_put():
    """Given items of three priorities put interleaved, when they are taken, then the lowest priority
    number comes first and items of one priority keep the order they were put in (Dramatiq's order)."""
    q = WorkQueue()
    put = [Item(1, "n1"), Item(0, "h1"), Item(2, "l1"), Item(1, "n2"), Item(0, "h2"), Item(2, "l2"), Item(1, "n3")]
    for it in put:
        q.put(it)
    assert q.qsize() == 7
    assert [q.get(timeout=1).name for _ in put] == ["h1", "h2", "n1", "n2", "n3", "l1", "l2"]
    assert q.empty()


def test_a_get_waits_for_its_timeout_then_raises_empty_and_get_nowait_does_not_wait():
    q = WorkQueue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.18 <= time.monotonic() - t0 < 2
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_a_waiting_thread_takes_an_item_put_after_it_started_waiting():
    q = WorkQueue()
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=5).name))
    t.start()
    time.sleep(0.1)
    q.put(Item(0, "late"))
    t.join(5)
    assert got == ["late"]


def test_many_threads_take_every_item_exactly_once():
    """Given 8 taking threads and 4 putting threads racing, when 20,000 items pass, then each is taken
    once, none is lost, and the queue ends empty with every task marked done (join returns)."""
    q = WorkQueue()
    n_put, per_putter = 4, 5000
    taken: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def take() -> None:
        while not stop.is_set():
            try:
                it = q.get(timeout=0.05)
            except queue.Empty:
                continue
            with lock:
                taken.append(it.name)
            q.task_done()

    def give(k: int) -> None:
        for i in range(per_putter):
            q.put(Item(i % 3, f"{k}:{i}"))

    takers = [threading.Thread(target=take) for _ in range(8)]
    givers = [threading.Thread(target=give, args=(k,)) for k in range(n_put)]
    for t in takers + givers:
        t.start()
    for t in givers:
        t.join(30)
    joined = threading.Thread(target=q.join)
    joined.start()
    joined.join(30)
    assert not joined.is_alive(), "join() did not return once every item was done"
    stop.set()
    for t in takers:
        t.join(5)
    assert len(taken) == n_put * per_putter
    assert len(set(taken)) == n_put * per_putter
    assert q.empty() and q.unfinished_tasks == 0
    with pytest.raises(ValueError):
        q.task_done()


def test_join_waits_for_the_items_still_being_worked_on():
    q = WorkQueue()
    q.put(Item(0, "a"))
    item = q.get(timeout=1)
    assert item.name == "a" and q.unfinished_tasks == 1
    done = threading.Event()
    t = threading.Thread(target=lambda: (q.join(), done.set()))
    t.start()
    assert not done.wait(0.2), "join() returned while an item was still being worked on"
    q.task_done()
    assert done.wait(5)
    t.join(5)
