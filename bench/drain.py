"""Drain a pre-filled queue and time it by the work's own Redis marks.

The queue is filled once per contender and message count, captured with
``DUMP`` and put back with ``RESTORE`` before every run, so filling (slow for
Celery's client) never counts and every round starts from identical Redis
contents. The clock runs from the first completed message to the N-th, both
recorded by the task itself (``bench/work.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.contenders import QueueContender
from bench.env import Bench
from bench.procs import Proc, cpu_seconds, wait_until

_snapshots: dict[tuple[str, int, str], dict[bytes, bytes]] = {}


def restore_filled(bench: Bench, contender: QueueContender, n: int, data: dict[str, Any], *, flush: bool = True) -> None:
    """Flush Redis, then put ``n`` messages for ``contender`` back (filling them the first time).

    On RabbitMQ there is nothing to restore: its queues are purged and filled
    again before every run (the clock never includes the fill). ``flush=False``
    (Redis only) keeps what is there, e.g. workers already registered.
    """
    key = (contender.fill_key, n, json.dumps(data, sort_keys=True))
    r = bench.redis
    if contender.broker == "rabbitmq":
        r.flushall()
        contender.fill(bench, n, data)
        return
    if flush or key not in _snapshots:
        r.flushall()
    if key not in _snapshots:
        contender.fill(bench, n, data)
        _snapshots[key] = {k: r.dump(k) for k in r.scan_iter(count=1000)}
        r.flushall()
    # One transaction: workers already running (warm) never see a queue whose message bodies are not back yet.
    pipe = r.pipeline(transaction=True)
    for k, v in _snapshots[key].items():
        pipe.restore(k, 0, v, replace=True)
    pipe.execute()


@dataclass
class Drained:
    rate: float  # messages per second
    seconds: float
    #: Worker CPU (all processes of the contender) per message, ms: steady state, startup excluded.
    cpu_ms: float
    #: Redis server CPU per message, µs, over the same window.
    redis_us: float
    #: RabbitMQ node CPU (beam.smp) per message, µs; NaN for a contender on Redis.
    rabbit_us: float = math.nan
    #: Share of one core Redis (and the RabbitMQ node) kept busy over the window.
    redis_core: float = math.nan
    rabbit_core: float = math.nan


def drain(
    bench: Bench,
    contender: QueueContender,
    processes: int,
    threads: int,
    n: int,
    data: dict[str, Any] | None = None,
    *,
    before_stop: Callable[[list[Proc]], None] | None = None,
    warm: bool = False,
) -> Drained:
    """Start ``contender``'s workers on a queue holding ``n`` messages; time the drain; stop them.

    ``warm``: start the workers on an empty queue, wait until every process is
    ready (``contender.ready``), and only then put the messages in, so that no
    process is still starting while the others drain (Redis contenders only).
    """
    warm = warm and contender.ready is not None and contender.broker == "redis"
    restore_filled(bench, contender, n, data or {})  # fills the snapshot the first time
    if warm:
        bench.flush()
    procs = contender.start(bench, processes, threads, n)
    try:
        watch = lambda: bench.procs.check(*procs)  # noqa: E731
        if warm:
            assert contender.ready is not None
            wait_until(
                lambda: contender.ready(bench, procs, processes),  # type: ignore[misc]
                timeout=120,
                interval=0.05,
                what=f"{contender.name}'s {processes} processes to be ready",
                watch=watch,
            )
            restore_filled(bench, contender, n, data or {}, flush=False)
        # CPU is counted from the first completion on, so imports and startup do not count.
        wait_until(lambda: bench.done() > 0, timeout=120, interval=0.01, what=f"{contender.name} to start", watch=watch)
        done0, cpu0, redis0, rabbit0, t0 = (
            bench.done(),
            _cpu_s(procs),
            bench.redis_cpu_s(),
            bench.rabbit_cpu_s(),
            time.monotonic(),
        )
        wait_until(
            lambda: bench.drain_window() is not None,
            timeout=max(120.0, n / 100),
            interval=0.05,
            what=f"{contender.name} to process {n} messages (done: {bench.done()})",
            watch=watch,
        )
        cpu1, redis1, rabbit1, t1 = _cpu_s(procs), bench.redis_cpu_s(), bench.rabbit_cpu_s(), time.monotonic()
        window = bench.drain_window()
        assert window is not None
        if before_stop is not None:
            before_stop(procs)
    finally:
        for p in procs:
            bench.procs.stop(p)
    first, last = window
    seconds = max(last - first, 1e-6)
    counted = max(1, n - done0)
    wall = max(t1 - t0, 1e-6)
    on_rabbit = contender.broker == "rabbitmq"
    return Drained(
        rate=(n - 1) / seconds,
        seconds=seconds,
        cpu_ms=(cpu1 - cpu0) * 1000 / counted,
        redis_us=(redis1 - redis0) * 1e6 / counted,
        rabbit_us=(rabbit1 - rabbit0) * 1e6 / counted if on_rabbit else math.nan,
        redis_core=(redis1 - redis0) / wall,
        rabbit_core=(rabbit1 - rabbit0) / wall if on_rabbit else math.nan,
    )


def _cpu_s(procs: list[Proc]) -> float:
    return cpu_seconds(p for proc in procs for p in proc.tree())
