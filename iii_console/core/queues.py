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

from iii_console.core.keys import Keys, as_str


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
    out: dict[str, QueueStat] = {t: QueueStat(t) for t in topics}
    names: set[str] = set()
    side = tuple(k.removeprefix(keys.queue("")) for k in (keys.queue_bodies(""), keys.queue_wake(""), keys.queue_deliveries("")))
    delayed_suffix = keys.queue_delayed("").removeprefix(keys.queue(""))
    legacy_suffix = keys.legacy_delay_name("")
    acks = keys.in_flight("", "").removeprefix(keys.queue("")).rstrip(".")
    for raw in client.scan_iter(match=keys.queue("*--*--*"), count=1000):
        name = as_str(raw)[len(keys.queue("")) :]
        if name.endswith(side) or name.startswith(acks):
            continue
        names.add(name)
    pipe = client.pipeline(transaction=False)
    ordered = sorted(names)
    for name in ordered:
        if name.endswith(delayed_suffix):
            pipe.zcard(keys.queue(name))
        else:
            pipe.llen(keys.queue(name))
    lens = pipe.execute() if ordered else []
    for name, n in zip(ordered, lens):
        if name.endswith(delayed_suffix):
            base, delayed = name.removesuffix(delayed_suffix), True
        else:  # ".DQ": an older version's delay queue, until it is moved
            base, delayed = (name.removesuffix(legacy_suffix), True) if name.endswith(legacy_suffix) else (name, False)
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
    for raw in client.scan_iter(match=keys.in_flight("*", "*"), count=1000):
        k = as_str(raw)
        held = keys.in_flight_queue(k)
        queue = held[1] if held else ""
        base = queue.removesuffix(legacy_suffix)
        try:
            topic, step, _ = base.rsplit("--", 2)
        except ValueError:
            continue
        st = out.setdefault(topic, QueueStat(topic))
        n = int(client.scard(k))
        if queue.endswith(legacy_suffix):
            st.delayed += n
        else:
            st.in_flight += n
    return out


def broker_depths(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Ready messages per queue (``topic--step--priority``) as a broker other than Redis last reported them.

    Empty when the broker is Redis, or when nobody copied them within their TTL (a
    stopped deployment shows no depths rather than old ones).
    """
    out: dict[str, int] = {}
    for name, n in client.hgetall(keys.broker_depths).items():
        try:
            out[as_str(name)] = int(n)
        except ValueError:
            continue
    return out


#: The field of ``keys.broker_depths`` holding the total of the broker's shared delay queues.
BROKER_DELAYED = "delayed"


def broker_delayed(depths: dict[str, int]) -> int | None:
    """Messages waiting out a delay (retries, delayed sends) on a broker other than Redis, all topics together.

    ``None`` when none was reported. RabbitMQ keeps them in delay queues shared by every
    topic, so the total is known but not how it splits between topics.
    """
    return depths.get(BROKER_DELAYED)


def add_broker_depths(stats: dict[str, QueueStat], depths: dict[str, int]) -> dict[str, QueueStat]:
    """Count ``depths`` (see :func:`broker_depths`) as waiting messages of their topics, by priority."""
    for name, n in depths.items():
        if name == BROKER_DELAYED:
            continue
        try:
            topic, step, prio = name.rsplit("--", 2)
        except ValueError:
            continue
        st = stats.setdefault(topic, QueueStat(topic))
        st.steps.add(step)
        st.waiting += n
        st.by_priority[prio] = st.by_priority.get(prio, 0) + n
    return stats
