"""The work every contender's task does, so all of them do exactly the same thing.

A message's data may ask for a sleep (``sleep_ms``) and a start mark (``mark``);
every message then increments one Redis counter. The first and the
``BENCH_TARGET``-th completion record their wall-clock time, so throughput is
measured by Redis state the task writes, not by any contender's event stream.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

DONE = "bench:done"
FIRST = "bench:first"
LAST = "bench:last"
MARK = "bench:mark"
LATENCY = "bench:latency"

_local = threading.local()


def client() -> redis.Redis:
    c = getattr(_local, "client", None)
    if c is None or getattr(_local, "pid", None) != os.getpid():
        c = _local.client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _local.pid = os.getpid()
    return c


def work(data: Any) -> None:
    now = time.time()
    r = client()
    if isinstance(data, dict):
        if data.get("mark"):
            r.set(MARK, repr(now))
        if "sent" in data:
            r.rpush(LATENCY, repr(now - float(data["sent"])))
        if data.get("sleep_ms"):
            time.sleep(data["sleep_ms"] / 1000)
    n = r.incr(DONE)
    if n == 1:
        r.set(FIRST, repr(time.time()))
    if n == int(os.environ.get("BENCH_TARGET", "0")):
        r.set(LAST, repr(time.time()))
