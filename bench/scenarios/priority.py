"""5. Priority: a high-priority message sent behind a backlog of normal ones.

A backlog of normal messages (each sleeping 20 ms, 1 worker process × 8
threads, so it takes many seconds to drain) is waiting and being worked; then
one high-priority message is sent. Measured: send returned → its task
started (the task records its start time in Redis).

Ours: ``priority="high"`` (its own Redis list and consumer). Dramatiq has only
in-memory actor priority: the urgent actor on the same queue waits behind the
Redis backlog; the usual workaround is a separate queue, shown too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from bench import contenders as c
from bench import work
from bench.drain import restore_filled
from bench.env import Bench
from bench.procs import Proc, wait_until
from bench.report import Section
from bench.stats import fmt, percentiles

NAME = "priority"
TITLE = "5. Priority: high-priority message behind a backlog of normal ones"
SLEEP_MS = 20
THREADS = 8


def _trial(bench: Bench, contender: c.QueueContender, send_urgent: Callable[[], object]) -> float:
    o = bench.options
    restore_filled(bench, contender, o.priority_backlog, {"sleep_ms": SLEEP_MS})
    procs: list[Proc] = contender.start(bench, 1, THREADS, 0)
    try:
        watch = lambda: bench.procs.check(*procs)  # noqa: E731
        wait_until(lambda: bench.done() >= 2 * THREADS, timeout=60, what="the backlog to be worked", watch=watch)
        send_urgent()
        sent = time.time()
        drain_s = o.priority_backlog * SLEEP_MS / 1000 / THREADS
        wait_until(
            lambda: bench.redis.exists(work.MARK) == 1,
            timeout=drain_s * 3 + 30,
            interval=0.005,
            what="the high-priority message to start",
            watch=watch,
        )
        return max(0.0, float(bench.redis.get(work.MARK)) - sent)
    finally:
        for p in procs:
            bench.procs.stop(p, grace_s=5)


def run(bench: Bench) -> Section:
    from bench.peers import dramatiq_app

    o = bench.options
    ours = c.ours()
    producer = c.our_producer(bench, c.our_config(bench), bench.redis)
    cases: list[tuple[str, c.QueueContender, Callable[[], object]]] = [
        (
            'iii-console, priority="high"',
            ours,
            lambda: producer.enqueue(c.TOPIC, {"mark": True}, trace_id=uuid.uuid4().hex, priority="high", source="bench"),
        ),
        ("Dramatiq, urgent actor (priority=0) on the same queue", c.dramatiq(), lambda: dramatiq_app.urgent.send({"mark": True})),
        ("Dramatiq, urgent actor on its own queue", c.dramatiq(), lambda: dramatiq_app.urgent_own_queue.send({"mark": True})),
    ]
    waits: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for trial in range(o.priority_trials):
        for name, contender, send in cases:
            waits[name].append(_trial(bench, contender, send))
            print(f"  [{NAME}] trial {trial + 1} {name}: {waits[name][-1] * 1000:,.1f} ms", flush=True)

    sec = Section(TITLE, header=["case", "trials", "p50 ms", "p95 ms", "max ms"])
    for name, _, _ in cases:
        p = percentiles([w * 1000 for w in waits[name]], (50, 95, 100))
        sec.row(name, len(waits[name]), fmt(p[50], 1), fmt(p[95], 1), fmt(p[100], 1))
    ours_p95 = percentiles(waits[cases[0][0]], (95,))[95]
    sec.target("ours starts within 0.5 s at p95", ours_p95 <= 0.5)
    sec.note(
        f"Backlog: {o.priority_backlog:,} normal messages of {SLEEP_MS} ms each on 1 process × {THREADS} threads "
        f"(≈ {o.priority_backlog * SLEEP_MS / 1000 / THREADS:.1f} s of work); the urgent message is sent once "
        f"{2 * THREADS} of them are done. With few trials p95 is close to the max."
    )
    return sec
