"""Read-only queue statistics straight from Redis, for the console and the CLI.

Queue layout (written by the queue adapter): each (topic, step) subscription
has one Dramatiq list per priority, ``{ns}:{topic}--{step}--{priority}``, a
body hash ``….msgs``, a sorted set of delayed messages ``….delayed`` (retries
and ``delay_ms``, scored by due time) and per-worker in-flight sets
``{ns}:__acks__.{worker}.{queue}``. This module only reads those keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from iii_console.core.keys import Keys


@dataclass
class QueueStat:
    topic: str
    waiting: int = 0
    delayed: int = 0
    in_flight: int = 0
    by_priority: dict[str, int] = field(default_factory=dict)
    steps: set[str] = field(default_factory=set)


def queue_stats(client: redis.Redis, keys: Keys, topics: Iterable[str] = ()) -> dict[str, QueueStat]:
    """Per topic: messages waiting (by priority), delayed (retries/`delay_ms`) and in flight.

    ``topics`` are always present in the result, even when their queues are empty
    (Redis drops empty lists, so an idle topic has no keys at all).
    """
    ns = keys.dramatiq_namespace
    out: dict[str, QueueStat] = {t: QueueStat(t) for t in topics}
    names: set[str] = set()
    for raw in client.scan_iter(match=f"{ns}:*--*--*", count=1000):
        k = raw.decode() if isinstance(raw, bytes) else raw
        name = k[len(ns) + 1:]
        if name.endswith((".msgs", ".wake", ".deliveries")) or name.startswith("__acks__"):
            continue
        names.add(name)
    pipe = client.pipeline(transaction=False)
    ordered = sorted(names)
    for name in ordered:
        if name.endswith(".delayed"):
            pipe.zcard(f"{ns}:{name}")
        else:
            pipe.llen(f"{ns}:{name}")
    lens = pipe.execute() if ordered else []
    for name, n in zip(ordered, lens):
        if name.endswith(".delayed"):
            base, delayed = name[:-8], True
        else:  # ".DQ": an older version's delay queue, until it is moved
            base, delayed = (name[:-3], True) if name.endswith(".DQ") else (name, False)
        try:
            topic, step, prio = base.rsplit("--", 2)
        except ValueError:
            continue
        st = out.setdefault(topic, QueueStat(topic))
        st.steps.add(step)
        if delayed:
            st.delayed += int(n)
        else:
            st.waiting += int(n)
            st.by_priority[prio] = st.by_priority.get(prio, 0) + int(n)
    for raw in client.scan_iter(match=f"{ns}:__acks__.*", count=1000):
        k = raw.decode() if isinstance(raw, bytes) else raw
        # key: {ns}:__acks__.{worker-uuid}.{queue}; the worker id has no dots.
        rest = k[len(f"{ns}:__acks__."):]
        queue = rest.split(".", 1)[1] if "." in rest else ""
        base = queue[:-3] if queue.endswith(".DQ") else queue
        try:
            topic, step, _ = base.rsplit("--", 2)
        except ValueError:
            continue
        st = out.setdefault(topic, QueueStat(topic))
        n = int(client.scard(k))
        if queue.endswith(".DQ"):
            st.delayed += n
        else:
            st.in_flight += n
    return out
