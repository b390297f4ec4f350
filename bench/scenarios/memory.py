"""7. Memory: worker RSS after 100,000 messages, idle CPU, and Redis with the event stream at its cap.

Worker RSS is read right after the drain (before stopping) with psutil. Then
the idle worker's CPU is sampled for a few seconds. Redis: after our drain,
the event stream is topped up to ``events.maxlen`` with copies of its own
entries, and ``INFO memory`` / ``MEMORY USAGE`` are read.
"""

from __future__ import annotations

import time

import psutil

from bench import contenders as c
from bench.drain import drain
from bench.env import Bench
from bench.procs import Proc, cpu_seconds, rss_mb
from bench.report import Section
from bench.stats import fmt
from iii_console.core.keys import Keys

NAME = "memory"
TITLE = "7. Memory: worker RSS after many messages; Redis with the event stream at its cap"
IDLE_SAMPLE_S = 5.0


def _workers(procs: list[Proc], *, skip_root: bool) -> list[psutil.Process]:
    out: list[psutil.Process] = []
    for p in procs:
        tree = p.tree()
        out.extend(tree[1:] if skip_root else tree)
    return out


def _cpu_s(ps: list[psutil.Process]) -> float:
    return cpu_seconds(ps)


def _measure(bench: Bench, contender: c.QueueContender, n: int, *, skip_root: bool) -> dict[str, float]:
    got: dict[str, float] = {}

    def sample(procs: list[Proc]) -> None:
        ps = _workers(procs, skip_root=skip_root)
        got["rss"] = rss_mb(ps)
        got["tree_rss"] = rss_mb(_workers(procs, skip_root=False))
        cpu0 = _cpu_s(ps)
        time.sleep(IDLE_SAMPLE_S)
        got["idle_cpu"] = (_cpu_s(ps) - cpu0) / IDLE_SAMPLE_S * 100

    d = drain(bench, contender, 1, 8, n, before_stop=sample)
    got["rate"] = d.rate
    return got


def _fill_stream_to_cap(bench: Bench, maxlen: int) -> None:
    keys = Keys()
    r = bench.redis
    sample = r.xrevrange(keys.events, count=1000)
    if not sample:
        return
    for _ in range(1000):  # bounded
        missing = maxlen - r.xlen(keys.events)
        if missing <= 0:
            return
        pipe = r.pipeline(transaction=False)
        for i in range(min(missing, 5000)):
            pipe.xadd(keys.events, sample[i % len(sample)][1], maxlen=maxlen, approximate=True)
        pipe.execute()


def run(bench: Bench) -> Section:
    n = bench.options.memory_messages
    ours = _measure(bench, c.ours(), n, skip_root=False)
    config = c.our_config(bench)
    _fill_stream_to_cap(bench, config.events.maxlen)
    r = bench.redis
    keys = Keys(config.redis.prefix)
    xlen = r.xlen(keys.events)
    stream_bytes = r.memory_usage(keys.events, samples=0) or 0
    used = r.info("memory")["used_memory"]
    print(
        f"  [{NAME}] ours: {ours['rss']:.0f} MB RSS after {n:,}; stream {xlen:,} entries, {stream_bytes / 2**20:.1f} MB",
        flush=True,
    )
    dram = _measure(bench, c.dramatiq(), n, skip_root=True)
    print(f"  [{NAME}] Dramatiq: {dram['rss']:.0f} MB RSS after {n:,}", flush=True)

    sec = Section(
        TITLE,
        header=[
            "contender (1 process × 8 threads)",
            f"worker RSS after {n:,} msgs, MB",
            "incl. CLI parent, MB",
            "idle CPU, % of a core",
            "drain msg/s",
        ],
    )
    sec.row("iii-console (events on)", fmt(ours["rss"], 1), fmt(ours["tree_rss"], 1), fmt(ours["idle_cpu"], 1), fmt(ours["rate"]))
    sec.row("Dramatiq (RedisBroker)", fmt(dram["rss"], 1), fmt(dram["tree_rss"], 1), fmt(dram["idle_cpu"], 1), fmt(dram["rate"]))
    sec.target(f"idle worker ≤ 1 % of a core ({ours['idle_cpu']:.1f} %)", ours["idle_cpu"] <= 1.0)
    sec.target(
        f"worker RSS ≤ Dramatiq's worker plus its CLI parent ({ours['rss']:.1f} vs {dram['tree_rss']:.1f} MB)",
        ours["rss"] <= dram["tree_rss"],
    )
    sec.note(
        f"Redis with our event stream at its cap (`events.maxlen` {config.events.maxlen:,}): stream {xlen:,} entries, "
        f"`MEMORY USAGE` {stream_bytes / 2**20:.1f} MB ({stream_bytes / max(xlen, 1):.0f} B/entry); "
        f"`used_memory` {used / 2**20:.1f} MB in all (queues drained)."
    )
    sec.note(
        f"Idle CPU: sampled for {IDLE_SAMPLE_S:g} s right after the drain, nothing queued. Celery is left out here "
        "(its client fills 100,000 messages at ~800/s)."
    )
    return sec
