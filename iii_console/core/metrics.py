"""Cluster-wide counters, kept in Redis by the event sink as it writes events.

Every process's sink adds its batch's counts with ``HINCRBY`` in the same
script call as the ``XADD``s (``lua/events_add.lua``), so counters and the event stream never disagree
and any server can expose metrics for the whole deployment (no per-process
scrape, no multiprocess registry).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from iii_console.core.events import Event
from iii_console.core.keys import Keys

#: Events counted, by type.
COUNTED = {
    "http.received",
    "message.enqueued",
    "message.started",
    "message.processed",
    "message.failed",
    "message.retrying",
    "message.dead_lettered",
    "message.replayed",
    "message.redelivered",
    "message.throttled",
    "message.deduplicated",
    "notification.sent",
    "cron.fired",
    "cron.skipped",
    "step.error",
}
#: Histogram bucket upper bounds, seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


#: Events whose ``duration_ms`` feeds the histograms.
_TIMED = ("message.processed", "message.failed")


def aggregate(batch: Iterable[Event]) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """(event counts, duration bucket counts, duration sums) for one batch.

    Counted by tuple first and formatted once per distinct key: the sink runs
    this for every batch on every worker, so it stays off the per-event path.
    """
    counts: dict[tuple[str, str, str], int] = {}
    timed = Timings()
    for ev in batch:
        t = ev.type
        if t not in COUNTED:
            continue
        topic, step = ev.topic or "", ev.step or ""
        key = (t, topic, step)
        counts[key] = counts.get(key, 0) + (_ticks(ev) if t == "cron.skipped" else 1)
        if ev.duration_ms is not None and t in _TIMED:
            timed.count(topic, step, ev.duration_ms)
    if not timed:  # a batch with no settles (a message's start, its log lines): counts only
        return {f"{t}|{topic}|{step}": n for (t, topic, step), n in counts.items()}, {}, {}
    return ({f"{t}|{topic}|{step}": n for (t, topic, step), n in counts.items()}, *timed.tables())


class Timings:
    """Processing times gathered between two writes of the duration histograms, counted as they arrive.

    The sink writes the histograms about once a second, aggregated over every settle since. It used to
    hold the settle events themselves until then (a second's worth: thousands in a busy worker) and
    aggregate them in one go; here each time becomes a bucket count and a sum as it is observed, and no
    event is kept (in a 2 × 8 drain, a few µs less worker CPU per message).
    """

    __slots__ = ("n", "slots", "sums")

    def __init__(self) -> None:
        self.slots: dict[tuple[str, str, int], int] = {}
        self.sums: dict[tuple[str, str], float] = {}
        #: Times counted so far.
        self.n = 0

    def __bool__(self) -> bool:
        return self.n > 0

    def add(self, events: Iterable[Event]) -> None:
        """Count the processing times of the timed events among ``events`` (``message.processed``, ``message.failed``)."""
        for ev in events:
            if ev.duration_ms is not None and ev.type in _TIMED:
                self.count(ev.topic or "", ev.step or "", ev.duration_ms)

    def count(self, topic: str, step: str, duration_ms: float) -> None:
        """Count one processing time of ``step`` on ``topic``: its bucket and its sum."""
        secs = duration_ms / 1000
        at = (topic, step, bisect_left(BUCKETS, secs))
        self.slots[at] = self.slots.get(at, 0) + 1
        self.sums[(topic, step)] = self.sums.get((topic, step), 0.0) + secs
        self.n += 1

    def merge(self, other: Timings) -> None:
        """Add ``other``'s counts and sums to these (a write that failed gives its times back)."""
        for at, n in other.slots.items():
            self.slots[at] = self.slots.get(at, 0) + n
        for ts, v in other.sums.items():
            self.sums[ts] = self.sums.get(ts, 0.0) + v
        self.n += other.n

    def tables(self) -> tuple[Counter[str], dict[str, float]]:
        """The duration histograms' fields: (bucket counts, sums), ``aggregate``'s second and third tables."""
        buckets: Counter[str] = Counter()
        for (topic, step, slot), n in self.slots.items():
            base = f"{topic}|{step}"
            for le in BUCKETS[slot:]:  # cumulative: every bucket at or above the value
                buckets[f"{base}|{le}"] += n
            buckets[f"{base}|+Inf"] += n
            buckets[f"{base}|count"] += n
        return buckets, {f"{topic}|{step}|sum": v for (topic, step), v in self.sums.items()}


def count_fields(batch: Iterable[Event]) -> list[str | int]:
    """The event counts of a few events as a flat ``[field, n, ...]`` list (``aggregate``'s first table, cheaper)."""
    out: list[str | int] = []
    for ev in batch:
        t = ev.type
        if t in COUNTED:
            out += (f"{t}|{ev.topic or ''}|{ev.step or ''}", _ticks(ev) if t == "cron.skipped" else 1)
    return out


def _ticks(ev: Event) -> int:
    """What a ``cron.skipped`` counts for: one stands for a batch of missed ticks, and the metric counts ticks."""
    return ev.data.get("count", 1) if isinstance(ev.data, dict) else 1


@dataclass
class Histogram:
    buckets: dict[str, int] = field(default_factory=dict)
    count: int = 0
    sum: float = 0.0


def read(client: redis.Redis, keys: Keys) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], Histogram]]:
    """Counts by (type, topic, step) and histograms by (topic, step)."""
    counts = {}
    for f, v in client.hgetall(keys.metrics_counts).items():
        t, topic, step = (f.decode() if isinstance(f, bytes) else f).split("|", 2)
        counts[(t, topic, step)] = int(v)
    hists: dict[tuple[str, str], Histogram] = {}
    for f, v in client.hgetall(keys.metrics_durations).items():
        topic, step, part = (f.decode() if isinstance(f, bytes) else f).rsplit("|", 2)
        h = hists.setdefault((topic, step), Histogram())
        if part == "sum":
            h.sum = float(v)
        elif part == "count":
            h.count = int(v)
        else:
            h.buckets[part] = int(v)
    return counts, hists
