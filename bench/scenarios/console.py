"""6. Console: the live console fed 5,000 events/s for 60 s (``--console-seconds``).

The console runs in its own process (``bench/console_driver.py``, the CLI's
``create_app`` under Textual's headless test harness). This process feeds the
event stream with realistic message lifecycles (enqueued, started, processed,
state.changed, notification.sent, log) at a steady rate in 20 ms batches, and
samples the console process's CPU and RSS (every second; every 10 s on a feed of
over two minutes, where the RSS slope over the last 8 minutes, or the second half of
a shorter feed, says whether memory is flat). Events rendered per second = events
taken into the console's model (which the 4 Hz render tick draws in batches).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import psutil

from bench.env import PY, Bench
from bench.procs import BenchError, wait_until
from bench.report import Section
from bench.stats import fmt, percentiles
from iii_console.core.events import Event
from iii_console.core.keys import Keys

NAME = "console"
TITLE = "6. Console: live console fed 5,000 events/s"
BATCH_S = 0.02
#: Timed key presses over the feed (``bench/console_driver.py``'s script, spread evenly):
#: one every this many seconds, and at least :data:`MIN_PRESSES`.
PRESS_EVERY_S = 1.5
MIN_PRESSES = 24
#: The RSS slope is taken over the last this many seconds of a long feed.
SLOPE_WINDOW_S = 480.0
#: Targets: key press → repaint p95, and what counts as flat memory (6 MB an hour).
KEY_P95_MS = 150.0
FLAT_MB_PER_MIN = 0.1


def console_available() -> str | None:
    """None if the console can be built, else why not."""
    try:
        from iii_console.tui.app import create_app  # noqa: F401
    except Exception as exc:  # the console is being built; any import failure means "not available"
        return f"{type(exc).__name__}: {exc}"
    return None


def _lifecycle(now_ms: int) -> list[dict[str, str]]:
    trace, mid = uuid.uuid4().hex, str(uuid.uuid4())
    base: dict[str, Any] = {
        "trace_id": trace,
        "message_id": mid,
        "topic": "message.sent",
        "step": "ProcessMessage",
        "queue": "message.sent--ProcessMessage--normal",
        "worker": "bench:1:worker0",
    }
    evs = [
        Event(
            type="message.enqueued", ts=now_ms, **base, data={"payload": {"id": mid[:8], "text": "hello"}, "priority": "normal"}
        ),
        Event(type="message.started", ts=now_ms, attempt=1, **base),
        Event(type="message.processed", ts=now_ms, attempt=1, duration_ms=20.5, **base),
        Event(
            type="state.changed",
            ts=now_ms,
            trace_id=trace,
            step="ProcessMessage",
            data={"group": "messages", "key": mid[:8], "op": "update", "new": {"status": "processed"}},
        ),
        Event(type="notification.sent", ts=now_ms, trace_id=trace, step="NotifyCompletion", data={"channel": "log"}),
        Event(
            type="log", ts=now_ms, trace_id=trace, step="ProcessMessage", data={"level": "info", "message": "message processed"}
        ),
    ]
    return [e.encode() for e in evs]


def _feed(
    bench: Bench, rate: int, seconds: float, console: psutil.Process
) -> tuple[int, float, list[tuple[float, float]], float]:
    """Feed ``rate`` events/s; returns (events fed, feed seconds, console RSS samples (s, MB), console CPU %)."""
    key = Keys().events
    per_batch = max(1, int(rate * BATCH_S))
    fed = 0
    rss: list[tuple[float, float]] = []
    sample_every = 10.0 if seconds > 120 else 1.0
    t0 = time.perf_counter()
    cpu0 = sum(console.cpu_times()[:2])
    next_sample = t0
    pending: list[dict[str, str]] = []
    for i in range(int(seconds / BATCH_S)):
        delay = t0 + i * BATCH_S - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pipe = bench.redis.pipeline(transaction=False)
        for _ in range(per_batch):
            if not pending:
                pending = _lifecycle(int(time.time() * 1000))
            pipe.xadd(key, pending.pop(), maxlen=100_000, approximate=True)
        pipe.execute()
        fed += per_batch
        if time.perf_counter() >= next_sample:
            rss.append((time.perf_counter() - t0, console.memory_info().rss / 2**20))
            next_sample += sample_every
    elapsed = time.perf_counter() - t0
    cpu = (sum(console.cpu_times()[:2]) - cpu0) / elapsed * 100
    return fed, elapsed, rss, cpu


def rss_slope(samples: list[tuple[float, float]], window_s: float) -> float:
    """Least-squares slope, MB per minute, of the RSS samples ``(s, MB)`` in the last ``window_s`` seconds."""
    if not samples:
        return float("nan")
    end = samples[-1][0]
    pts = [(t, m) for t, m in samples if t >= end - window_s]
    if len(pts) < 2:
        return float("nan")
    mt = sum(t for t, _ in pts) / len(pts)
    mm = sum(m for _, m in pts) / len(pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (m - mm) for t, m in pts) / var * 60 if var else float("nan")


def run(bench: Bench) -> Section:
    sec = Section(TITLE)
    why = console_available()
    if why is not None:
        sec.note(f"skipped: console not available ({why})")
        return sec
    o = bench.options
    bench.flush()
    ready, stop, out = bench.tmp / "console.ready", bench.tmp / "console.stop", bench.tmp / "console.json"
    for f in (ready, stop, out):
        f.unlink(missing_ok=True)
    driver = bench.procs.start(
        "console",
        [
            PY,
            "-m",
            "bench.console_driver",
            "--redis",
            bench.url,
            "--ready",
            str(ready),
            "--stop",
            str(stop),
            "--out",
            str(out),
            "--max-seconds",
            str(o.console_seconds + 60),
            "--presses",
            str(max(MIN_PRESSES, int(o.console_seconds / PRESS_EVERY_S))),
            "--feed-seconds",
            str(o.console_seconds),
            *(["--profile-keys", os.environ["III_BENCH_PROFILE_KEYS"]] if os.environ.get("III_BENCH_PROFILE_KEYS") else []),
        ],
    )
    try:
        wait_until(ready.exists, timeout=60, interval=0.1, what="the console to start", watch=lambda: bench.procs.check(driver))
        console = psutil.Process(driver.pid)
        t_start = time.time()
        fed, elapsed, rss, cpu = _feed(bench, o.console_rate, o.console_seconds, console)
        t_end = time.time()
        time.sleep(2.0)  # let it catch up, so "behind" below is a real backlog
        stop.write_text("stop")
        wait_until(
            out.exists, timeout=60, interval=0.1, what="the console driver to finish", watch=lambda: bench.procs.check(driver)
        )
    except BenchError as exc:
        sec.note(f"skipped: console failed while running ({exc})")
        return sec
    finally:
        stop.write_text("stop")
        bench.procs.stop(driver, grace_s=10)
    result = json.loads(out.read_text())
    samples = result["samples"]
    within = [s for s in samples if t_start <= s[0] <= t_end + 0.5]
    if len(within) < 2 or within[0][1] < 0:
        sec.note("skipped: the console exposes no event counter (`app.model.seq`) to measure")
        return sec
    ingested = within[-1][1] - within[0][1]
    window = within[-1][0] - within[0][0]
    ticks = (within[-1][2] - within[0][2]) / window if window > 0 else float("nan")
    final_seq = samples[-1][1]
    keys = [k for k in result["key_ms"] if k == k]
    kp = percentiles(keys, (50, 95, 100))
    sec.header = ["metric", "value"]
    sec.row("events fed / s (target rate)", f"{fed / elapsed:,.0f} ({o.console_rate:,})")
    sec.row("events taken into the console / s", fmt(ingested / window if window else float("nan")))
    sec.row("render ticks / s", fmt(ticks, 1))
    sec.row("behind at the end (fed − ingested, 2 s after feeding stopped)", fmt(max(0, fed - final_seq)))
    sec.row("console CPU, % of one core", fmt(cpu))
    mb = [m for _, m in rss]
    sec.row(
        "console RSS start → half-way → end (max), MB",
        f"{mb[0]:.0f} → {mb[len(mb) // 2]:.0f} → {mb[-1]:.0f} ({max(mb):.0f})" if mb else "—",
    )
    slope_s = SLOPE_WINDOW_S if o.console_seconds >= SLOPE_WINDOW_S + 60 else o.console_seconds / 2
    slope = rss_slope(rss, slope_s)
    sec.row(f"console RSS slope over the last {slope_s:g} s, MB/min", fmt(slope, 2))
    missed = len(result["key_ms"]) - len(keys)
    sec.row(
        f"key press → repaint, ms, p50 / p95 / max ({len(keys)} presses"
        + (f", {missed} unanswered in 10 s" if missed else "")
        + ")",
        f"{fmt(kp[50], 1)} / {fmt(kp[95], 1)} / {fmt(kp[100], 1)}",
    )
    key_cpu = [c for c in result.get("key_cpu_ms", []) if c == c]
    if key_cpu:
        cp = percentiles(key_cpu, (50, 95, 100))
        sec.row(
            "UI thread CPU from press to repaint, ms, p50 / p95 / max",
            f"{fmt(cp[50], 1)} / {fmt(cp[95], 1)} / {fmt(cp[100], 1)}",
        )
    by_key: dict[str, list[float]] = {}
    cpu_by_key: dict[str, list[float]] = {}
    for key, ms, *rest in result.get("keys", []):
        if ms == ms:
            by_key.setdefault(key, []).append(ms)
            cpu_by_key.setdefault(key, []).extend(rest[:1])
    sec.row(
        "key press → repaint by key, median ms wall / UI thread CPU (presses)",
        ", ".join(
            f"{k} {fmt(percentiles(v, (50,))[50], 0)} / {fmt(percentiles(cpu_by_key[k], (50,))[50], 0) if cpu_by_key[k] else '—'} ({len(v)})"
            for k, v in by_key.items()
        ),
    )
    others: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    for key, ms, *rest in result.get("keys", []):
        if ms == ms and len(rest) >= 3:
            others.setdefault(key, []).append(rest[1])
            waits.setdefault(key, []).append(rest[2])
    if others:
        sec.row(
            "meanwhile by key, median ms: other threads' CPU (the reader's) / UI thread waiting for the model lock",
            ", ".join(
                f"{k} {fmt(percentiles(v, (50,))[50], 0)} / {fmt(percentiles(waits[k], (50,))[50], 1)}" for k, v in others.items()
            ),
        )
    sec.row("most events read at once, not yet in the model", fmt(result.get("inbox_peak")))
    sec.target(
        f"key press → repaint p95 ≤ {KEY_P95_MS:g} ms over ≥ 20 presses ({fmt(kp[95], 1)} ms, {len(keys)} presses)",
        len(keys) >= 20 and kp[95] <= KEY_P95_MS,
    )
    long_run = o.console_seconds >= SLOPE_WINDOW_S + 60
    sec.target(
        f"memory flat over a {SLOPE_WINDOW_S / 60 + 1:g}+ minute feed: RSS slope ≤ {FLAT_MB_PER_MIN:g} MB/min"
        + (f" ({slope:.2f})" if long_run else " (needs --console-seconds 600)"),
        (slope <= FLAT_MB_PER_MIN) if long_run else None,
    )
    sec.note(
        f"{o.console_seconds:g} s of feeding. Headless Textual at 160×48: frames are composed but not written to a "
        "terminal, so terminal output cost is not included. Key presses: tab switches (2 / 1), cursor and page "
        "keys on Messages, scrolling the Live log, a filter typed and entered, and esc clearing it, spread over the "
        "feed; each timed from the press to the first refresh after its action ran (for enter, the filter applied)."
    )
    return sec
