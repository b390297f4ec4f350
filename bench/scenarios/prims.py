"""8. Throttle and fan-in.

Throttle: 2 worker processes × 8 threads; a backlog of calls spread over 4 keys,
each key throttled to ``LIMIT`` starts per ``PERIOD_MS`` (cluster-wide). Measured
from the handlers' own timestamps: the busiest window of each key (most starts
within any ``PERIOD_MS``) and the rate each key ran at, against the limit.

Fan-in: one group of ``CHILDREN`` children (no-op handlers) with a completion
topic, 2 worker processes × 8 threads, several rounds. Measured: the last child's
handler returned → the completion's handler started (both record their time).
"""

from __future__ import annotations

import time
import uuid

from bench import contenders as c
from bench.env import ROOT, Bench
from bench.procs import wait_until
from bench.report import Section
from bench.stats import fmt, percentiles

NAME = "prims"
TITLE = "8. Primitives: per-key throttle held at full load; fan-in completion latency"
STEPS = ROOT / "bench" / "project" / "prims"
KEYS = ("k1", "k2", "k3", "k4")
LIMIT = 20
PERIOD_MS = 1000
CHILDREN = 1000
#: Start jitter allowed when checking the limit from the handlers' own clocks.
SLACK_MS = 20


def _busiest(ts: list[float], window_ms: int) -> int:
    """Most timestamps (seconds, sorted) within any ``window_ms``."""
    return _busiest_at(ts, window_ms)[0]


def _busiest_at(ts: list[float], window_ms: int) -> tuple[int, float]:
    """Most timestamps (seconds, sorted) within any ``window_ms``, and when the first such window opens
    (seconds after the first timestamp)."""
    best, at, j = 0, 0.0, 0
    for i in range(len(ts)):
        while ts[i] - ts[j] >= window_ms / 1000:
            j += 1
        if i - j + 1 > best:
            best, at = i - j + 1, ts[j] - ts[0]
    return best, at


def _throttle(bench: Bench, calls_per_key: int) -> Section:
    config = c.our_config(
        bench,
        steps=STEPS,
        events=True,
        queues={"bench.call": {"throttle": {"key": "key", "limit": LIMIT, "period_ms": PERIOD_MS}}},
    )
    producer = c.our_producer(bench, config, bench.redis)
    for i in range(calls_per_key):
        for k in KEYS:
            producer.enqueue("bench.call", {"key": k, "i": i}, trace_id=uuid.uuid4().hex, source="bench")
    procs = c.start_our_workers(bench, config, 2, 8)
    c.wait_our_workers(bench, procs, config)
    expect_s = calls_per_key / LIMIT * PERIOD_MS / 1000
    wait_until(
        lambda: all(bench.redis.llen(f"bench:calls:{k}") >= calls_per_key for k in KEYS),
        timeout=expect_s * 3 + 60,
        what="every throttled call",
        watch=lambda: bench.procs.check(*procs),
    )
    sec = Section(
        f"8a. Per-key throttle (limit {LIMIT} per {PERIOD_MS} ms, 4 keys, 2 processes × 8 threads)",
        header=[
            "key",
            "calls",
            f"busiest {PERIOD_MS} ms",
            f"busiest {PERIOD_MS - SLACK_MS} ms",
            "it opens, s after the key's first start",
            f"busiest {PERIOD_MS - SLACK_MS} ms after the first {PERIOD_MS * 2} ms",
            "steady rate /s",
            "limit /s",
        ],
    )
    worst = 0
    for k in KEYS:
        ts = sorted(float(x) for x in bench.redis.lrange(f"bench:calls:{k}", 0, -1))
        busiest = _busiest(ts, PERIOD_MS)
        within, opens = _busiest_at(ts, PERIOD_MS - SLACK_MS)
        later = _busiest([t for t in ts if t - ts[0] >= PERIOD_MS * 2 / 1000], PERIOD_MS - SLACK_MS) if ts else 0
        worst = max(worst, within)
        # After the first window's burst, each further LIMIT starts take one period.
        steady = (len(ts) - LIMIT) / (ts[-1] - ts[0]) if len(ts) > LIMIT and ts[-1] > ts[0] else 0.0
        sec.row(k, len(ts), busiest, within, fmt(opens, 2), later, fmt(steady, 1), fmt(LIMIT / (PERIOD_MS / 1000), 1))
    sec.target(f"no key above {LIMIT} starts in any {PERIOD_MS - SLACK_MS} ms window of handler start times", worst <= LIMIT)
    sec.note(
        f"Admission is decided by Redis's clock; a handler starts a few ms after it is admitted, so measured by "
        f"the handlers' clocks a {PERIOD_MS} ms window can hold one start more than the limit when the oldest "
        f"start ran late. {SLACK_MS} ms of slack absorbs that start jitter."
    )
    for p in procs:
        bench.procs.stop(p, grace_s=5)
    return sec


def _fanin(bench: Bench, rounds: int) -> Section:
    config = c.our_config(bench, steps=STEPS, events=True)
    producer = c.our_producer(bench, config, bench.redis)
    procs = c.start_our_workers(bench, config, 2, 8)
    c.wait_our_workers(bench, procs, config)
    gaps: list[float] = []
    try:
        for _ in range(rounds):
            gid = uuid.uuid4().hex
            producer.enqueue_group(
                "bench.child",
                [{"group": gid, "i": i} for i in range(CHILDREN)],
                then="bench.done",
                group_id=gid,
                trace_id=uuid.uuid4().hex,
                source="bench",
            )
            wait_until(
                lambda: bench.redis.exists(f"bench:done:{gid}") == 1,
                timeout=120,
                interval=0.01,
                what="the group's completion",
                watch=lambda: bench.procs.check(*procs),
            )
            last, done = bench.redis.mget(f"bench:child-last:{gid}", f"bench:done:{gid}")
            gaps.append(max(0.0, float(done) - float(last)) * 1000)
            time.sleep(0.2)
    finally:
        for p in procs:
            bench.procs.stop(p, grace_s=5)
    pct = percentiles(gaps, (50, 95, 100))
    sec = Section(
        f"8b. Fan-in: {CHILDREN:,} children → completion (2 processes × 8 threads)",
        header=["rounds", "p50 ms", "p95 ms", "max ms"],
    )
    sec.row(len(gaps), fmt(pct[50], 1), fmt(pct[95], 1), fmt(pct[100], 1))
    sec.note(
        "From the last child's handler returning to the completion's handler starting: the last settle "
        "enqueues the completion in its own script, so this is one fetch away."
    )
    return sec


def run(bench: Bench) -> Section:
    o = bench.options
    bench.flush()
    throttle = _throttle(bench, 60 if o.quick else 200)
    bench.flush()
    fanin = _fanin(bench, 3 if o.quick else 10)
    out = Section(TITLE)
    out.note(throttle.markdown())
    out.note(fanin.markdown())
    return out
