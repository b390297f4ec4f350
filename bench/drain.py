"""Drain a pre-filled queue and time it by the work's own Redis marks.

The queue is filled once per contender and message count, captured with
``DUMP`` and put back with ``RESTORE`` before every run, so filling (slow for
Celery's client) never counts and every round starts from identical Redis
contents. The clock runs from the first completed message to the N-th, both
recorded by the task itself (``bench/work.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.contenders import QueueContender
from bench.env import Bench
from bench.procs import Proc, cpu_seconds, wait_until

_snapshots: dict[tuple[str, int, str], dict[bytes, bytes]] = {}


def restore_filled(bench: Bench, contender: QueueContender, n: int, data: dict[str, Any]) -> None:
    """Flush Redis, then put ``n`` messages for ``contender`` back (filling them the first time)."""
    key = (contender.fill_key, n, json.dumps(data, sort_keys=True))
    r = bench.redis
    r.flushall()
    if key not in _snapshots:
        contender.fill(bench, n, data)
        _snapshots[key] = {k: r.dump(k) for k in r.scan_iter(count=1000)}
        r.flushall()
    pipe = r.pipeline(transaction=False)
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


def drain(
    bench: Bench,
    contender: QueueContender,
    processes: int,
    threads: int,
    n: int,
    data: dict[str, Any] | None = None,
    *,
    before_stop: Callable[[list[Proc]], None] | None = None,
) -> Drained:
    """Start ``contender``'s workers on a queue holding ``n`` messages; time the drain; stop them."""
    assert bench.procs is not None
    restore_filled(bench, contender, n, data or {})
    procs = contender.start(bench, processes, threads, n)
    try:
        watch = lambda: bench.procs.check(*procs)  # type: ignore[union-attr]  # noqa: E731
        # CPU is counted from the first completion on, so imports and startup do not count.
        wait_until(lambda: bench.done() > 0, timeout=120, interval=0.01, what=f"{contender.name} to start", watch=watch)
        done0, cpu0, redis0 = bench.done(), _cpu_s(procs), _redis_cpu_s(bench)
        wait_until(
            lambda: bench.drain_window() is not None,
            timeout=max(120.0, n / 100),
            interval=0.05,
            what=f"{contender.name} to process {n} messages (done: {bench.done()})",
            watch=watch,
        )
        cpu1, redis1 = _cpu_s(procs), _redis_cpu_s(bench)
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
    return Drained(
        rate=(n - 1) / seconds, seconds=seconds, cpu_ms=(cpu1 - cpu0) * 1000 / counted, redis_us=(redis1 - redis0) * 1e6 / counted
    )


def _cpu_s(procs: list[Proc]) -> float:
    return cpu_seconds(p for proc in procs for p in proc.tree())


def _redis_cpu_s(bench: Bench) -> float:
    info = bench.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
