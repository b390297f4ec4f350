"""Cluster-wide counters, kept in Redis by the event sink as it writes events.

Every process's sink adds its batch's counts with ``HINCRBY`` in the same
script call as the ``XADD``s (``lua/events_add.lua``), so counters and the event stream never disagree
and any server can expose metrics for the whole deployment (no per-process
scrape, no multiprocess registry).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import redis

from iii_console.core.events import Event
from iii_console.core.keys import Keys

#: Events counted, by type.
COUNTED = {
    "http.received", "message.enqueued", "message.started", "message.processed", "message.failed",
    "message.retrying", "message.dead_lettered", "message.replayed", "notification.sent", "cron.fired",
    "cron.skipped", "step.error",
}
#: Histogram bucket upper bounds, seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def aggregate(batch: Iterable[Event]) -> tuple[Counter[str], Counter[str], dict[str, float]]:
    """(event counts, duration bucket counts, duration sums) for one batch."""
    counts: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    sums: dict[str, float] = {}
    for ev in batch:
        if ev.type not in COUNTED:
            continue
        counts[f"{ev.type}|{ev.topic or ''}|{ev.step or ''}"] += 1
        if ev.type in ("message.processed", "message.failed") and ev.duration_ms is not None:
            base = f"{ev.topic or ''}|{ev.step or ''}"
            secs = ev.duration_ms / 1000
            for le in BUCKETS:
                if secs <= le:
                    buckets[f"{base}|{le}"] += 1
            buckets[f"{base}|+Inf"] += 1
            buckets[f"{base}|count"] += 1
            sums[f"{base}|sum"] = sums.get(f"{base}|sum", 0.0) + secs
    return counts, buckets, sums


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
