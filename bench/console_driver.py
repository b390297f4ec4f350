"""Runs the live console in its own process for the console scenario (``python -m bench.console_driver``).

The app is the one the CLI builds (``iii_console.tui.app.create_app``), run
headless by Textual's test harness at 160×48: it still composes and renders
every frame, it only does not write them to a terminal. While it runs this
process records, once a second, how many events the console has taken into its
model and how many render ticks it has done, and presses keys as a user would
(:data:`SCRIPT`: tab switches, moving the cursor, scrolling the log, filtering and
clearing the filter), spread evenly over ``--feed-seconds``, timing each from the
press to the first screen refresh after it was handled. It stops when the harness
creates ``--stop`` (or after ``--max-seconds``) and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: One timed press: (keys typed first, untimed; the key timed; what marks it handled:
#: ``action``, any action it is bound to, or ``set_filter``, the filter being applied).
Press = tuple[tuple[str, ...], str, str]

#: Seconds between the untimed keys typed before a timed one (a fast typist), so the timed
#: key measures its own handling, not that of a burst queued in front of it.
TYPE_GAP_S = 0.08

#: What a user does, in turn, round and round.
SCRIPT: tuple[Press, ...] = (
    ((), "2", "action"),  # Messages
    ((), "down", "action"),  # cursor down the table
    ((), "pagedown", "action"),
    ((), "1", "action"),  # Live
    ((), "pageup", "action"),  # scroll the log back
    ((), "end", "action"),  # and follow it again
    (("slash", *"step:ProcessMessage"), "enter", "set_filter"),  # filter
    ((), "2", "action"),
    ((), "up", "action"),
    ((), "escape", "action"),  # clear the filter
    ((), "1", "action"),
    ((), "2", "action"),
)


async def drive(
    url: str, prefix: str, ready: Path, stop: Path, max_s: float, presses: int, feed_s: float, profile: Path | None = None
) -> dict[str, Any]:
    import cProfile

    from iii_console.tui.app import create_app

    #: Profiles the UI thread from each press to its repaint only (``--profile-keys``).
    profiler = cProfile.Profile() if profile else None
    app = create_app(redis_url=url, prefix=prefix)
    lock = _TimedLock(app.model_lock)
    app.model_lock = lock  # type: ignore[assignment]  # the app's lock, timed: same acquire/release/with
    samples: list[tuple[float, int, int]] = []
    #: (key, ms to the repaint, ms of the UI thread's CPU meanwhile: less sensitive to other load,
    #: ms of the other threads' CPU meanwhile (the reader's, sharing the GIL), ms the UI thread
    #: waited for the model lock meanwhile)
    keys: list[tuple[str, float, float, float, float]] = []

    def sample() -> None:
        model = getattr(app, "model", None)
        samples.append((time.time(), getattr(model, "seq", -1), getattr(app, "render_count", -1)))

    async def press_keys() -> None:
        every = feed_s / (presses + 1)
        t0 = time.monotonic()
        for i in range(presses):
            await asyncio.sleep(max(0.0, t0 + (i + 1) * every - time.monotonic()))
            if stop.exists():
                return
            before, key, hook = SCRIPT[i % len(SCRIPT)]
            for k in before:  # typed as a person types, each handled before the next
                _post_key(app, k)
                await asyncio.sleep(TYPE_GAP_S)
            cpu0, proc0, wait0 = time.thread_time(), time.process_time(), lock.waited
            if profiler is not None:
                profiler.enable()
            ms = await _key_to_repaint(app, key, hook)
            if profiler is not None:
                profiler.disable()
            ui = time.thread_time() - cpu0
            others = time.process_time() - proc0 - ui
            keys.append((key, ms, ui * 1000, others * 1000, (lock.waited - wait0) * 1000))

    trace = os.environ.get("III_BENCH_TRACEMALLOC")
    async with app.run_test(headless=True, size=(160, 48)) as pilot:
        await pilot.pause(0.5)
        ready.write_text("ready")
        t_end = time.monotonic() + max_s
        presser = asyncio.create_task(press_keys())
        tracer = asyncio.create_task(_trace_memory(Path(trace), feed_s)) if trace else None
        stats = os.environ.get("III_BENCH_MEMSTATS")
        statter = asyncio.create_task(_mem_stats(Path(stats))) if stats else None
        census = os.environ.get("III_BENCH_GARBAGE")
        counter = asyncio.create_task(_garbage_census(Path(census), feed_s)) if census else None
        live = os.environ.get("III_BENCH_LIVE")
        liver = asyncio.create_task(_live_census(Path(live))) if live else None
        try:
            while not stop.exists() and time.monotonic() < t_end:
                sample()
                await asyncio.sleep(1.0)
        finally:
            presser.cancel()
            if tracer is not None:
                tracer.cancel()
            if statter is not None:
                statter.cancel()
            if counter is not None:
                counter.cancel()
            if liver is not None:
                liver.cancel()
        sample()
        if profiler is not None and profile is not None:
            profiler.dump_stats(str(profile))
        return {
            "samples": samples,
            "key_ms": [ms for _, ms, *_ in keys],
            "key_cpu_ms": [cpu for _, ms, cpu, *_ in keys if ms == ms],
            "keys": keys,
            "inbox_peak": getattr(app, "inbox_peak", None),
        }


def _lru_caches(least: int = 100) -> dict[str, list[int]]:
    """The ``functools.lru_cache``s of the loaded modules (functions, methods, class and static methods)
    holding at least ``least`` entries, each once under the name of the function it wraps (a module
    that imports one does not list it again): ``[entries, maxsize]``. A cache filling is growth that
    stops; a leak is not. (``gc.get_objects`` misses them: made at import, they are frozen.)"""
    import functools

    out: dict[str, list[int]] = {}

    def look(value: object) -> None:
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if isinstance(value, functools._lru_cache_wrapper):
            info = value.cache_info()
            if info.currsize >= least:
                name = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
                out[name] = [info.currsize, info.maxsize or 0]

    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(("rich", "textual", "iii_console", "msgspec", "redis")):
            continue
        for value in list(vars(mod).values()):
            look(value)
            if isinstance(value, type) and value.__module__ == mod_name:
                for v in list(vars(value).values()):
                    look(v)
    return out


async def _live_census(out: Path, every: float = 60.0) -> None:
    """``III_BENCH_LIVE=FILE``: every ``every`` s, a full collection, then a JSON line of the blocks
    Python's allocator still holds, RSS, the tracked objects by type and the ``lru_cache``s with how
    full they are (:func:`_lru_caches`). Taken after the collection, the blocks are what the console
    keeps, without the garbage waiting for a pass: if they stay level while RSS rises, the growth is
    the allocators', not objects kept."""
    import gc
    from collections import Counter

    with out.open("a") as f:
        while True:
            await asyncio.sleep(every)
            gc.collect()
            blocks = sys.getallocatedblocks()
            kinds = Counter(type(o).__name__ for o in gc.get_objects())
            caches = _lru_caches()
            f.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "blocks": blocks,
                        "rss": _rss_mb(),
                        "tracked": sum(kinds.values()),
                        "kinds": dict(kinds),
                        "caches": caches,
                    }
                )
                + "\n"
            )
            f.flush()


async def _trace_memory(out: Path, feed_s: float) -> None:
    """``III_BENCH_TRACEMALLOC=FILE``: what grew between a third and the end of the feed, by line.

    Snapshots once the buffers have filled (a third of the feed) and again near its end,
    and writes the memory Python holds and the process's RSS at both, the object counts by
    type at both, and the 40 biggest differences (tracemalloc slows the console: CPU and key
    figures from such a run are not comparable)."""
    import gc
    import tracemalloc

    tracemalloc.start(int(os.environ.get("III_BENCH_TRACEMALLOC_FRAMES") or 4))
    await asyncio.sleep(feed_s / 3)
    gc.collect()
    first, kinds0, rss0 = tracemalloc.take_snapshot(), dict(_kinds()), _rss_mb()
    traced0 = tracemalloc.get_traced_memory()[0]
    await asyncio.sleep(feed_s * 2 / 3 - 5)
    gc.collect()
    last, kinds1, rss1 = tracemalloc.take_snapshot(), dict(_kinds()), _rss_mb()
    traced1 = tracemalloc.get_traced_memory()[0]
    lines = [
        f"traced by Python: {traced0 / 2**20:.1f} -> {traced1 / 2**20:.1f} MB; RSS {rss0:.1f} -> {rss1:.1f} MB",
        "objects by type (then -> now): "
        + ", ".join(f"{k} {kinds0.get(k, 0)} -> {v}" for k, v in sorted(kinds1.items(), key=lambda kv: -kv[1])),
    ]
    for stat in last.compare_to(first, "traceback")[:40]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks")
        lines.extend("    " + str(f) for f in stat.traceback.format()[-8:])
    out.write_text("\n".join(lines))


async def _garbage_census(out: Path, feed_s: float, window: float = 60.0) -> None:
    """``III_BENCH_GARBAGE=FILE``: what the cycle collector would free, by type and by what made it.

    Once the buffers have filled (a third of the feed) the collector is run and then kept
    from running for ``window`` seconds; what a collection then finds unreachable is only
    the cyclic garbage the console made in that window. It is kept (``DEBUG_SAVEALL``) and
    written by type, with, for the commonest types, where tracemalloc saw them allocated.
    """
    import gc
    import tracemalloc
    from collections import Counter

    await asyncio.sleep(feed_s / 3)
    tracemalloc.start(6)
    gc.collect()
    gc.disable()
    try:
        await asyncio.sleep(window)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
        gc.enable()
    kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in found)
    lines = [f"{len(found)} objects in cycles made in {window:g} s; by type:"]
    lines += [f"{n:8d} {k}" for k, n in kinds.most_common(40)]
    where: Counter[str] = Counter()
    for o in found:
        tb = tracemalloc.get_object_traceback(o)
        if tb is not None:
            where[
                f"{type(o).__qualname__} <- " + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(tb))
            ] += 1
    tracemalloc.stop()
    lines.append("where the commonest were allocated (innermost frame first):")
    lines += [f"{n:8d} {k}" for k, n in where.most_common(40)]
    del found
    out.write_text("\n".join(lines) + "\n")


async def _mem_stats(out: Path, every: float = 10.0) -> None:
    """``III_BENCH_MEMSTATS=FILE``: every ``every`` s a JSON line of where the process's memory is:
    RSS, glibc's heap (``mallinfo2``: bytes in use, free inside the heaps, mmapped) and
    Python's small-object allocator (arenas, bytes in used and free blocks), and the cycle
    collector's passes and what they freed. Telling these apart says whether RSS growth is
    objects kept, garbage waiting for a collector pass, or memory freed but not returned."""
    import ctypes
    import gc

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        libc = None
    with out.open("a") as f:
        while True:
            row: dict[str, float] = {"t": time.time(), "rss": _rss_mb(), "blocks": sys.getallocatedblocks()}
            if libc is not None:
                m = libc.mallinfo2()
                row.update(heap=m.arena / 2**20, mmapped=m.hblkhd / 2**20, used=m.uordblks / 2**20, free=m.fordblks / 2**20)
            row.update(_pymalloc_stats())
            # Per generation of the cycle collector: (passes, objects it freed), since start.
            row.update({f"gc{i}": (st["collections"], st["collected"]) for i, st in enumerate(gc.get_stats())})  # type: ignore[misc]
            f.write(json.dumps(row) + "\n")
            f.flush()
            await asyncio.sleep(every)


def _pymalloc_stats() -> dict[str, float]:
    """Arenas and bytes of Python's small-object allocator, from ``sys._debugmallocstats`` (written to fd 2)."""
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    names = {
        "# arenas allocated current": "py_arenas",
        "# bytes in allocated blocks": "py_used",
        "# bytes in available blocks": "py_free",
    }
    out: dict[str, float] = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        name, _, value = line.partition("=")
        key = names.get(name.strip())
        if key:
            n = int(value.strip().replace(",", ""))
            out[key] = n if key == "py_arenas" else n / 2**20
    return out


try:
    import ctypes as _ctypes

    class _MallInfo2(_ctypes.Structure):
        _fields_ = [
            (n, _ctypes.c_size_t)
            for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
        ]
except ImportError:  # pragma: no cover
    pass


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _kinds() -> list[tuple[str, int]]:
    import gc
    from collections import Counter

    return Counter(type(o).__name__ for o in gc.get_objects()).most_common(30)


class _TimedLock:
    """The app's model lock, adding up how long the UI (main) thread waited to take it."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._main = threading.main_thread()
        self.waited = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.current_thread() is not self._main:
            return bool(self._lock.acquire(blocking, timeout))
        t0 = time.perf_counter()
        got = bool(self._lock.acquire(blocking, timeout))
        self.waited += time.perf_counter() - t0
        return got

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _post_key(app: Any, key: str) -> None:
    """A key as a terminal sends it (printable ones with their character), not waiting for idle."""
    from textual import events

    app.post_message(events.Key(key, key if len(key) == 1 else None))


async def _key_to_repaint(app: Any, key: str, hook: str) -> float:
    """Milliseconds from a key press to the first screen refresh after it was handled.

    The key is posted like a terminal's, not with ``pilot.press``, which also waits for
    the whole app to go idle. Handled = the action it is bound to returned (wrapping the
    app's ``_dispatch_action``, through which every bound key's action runs), or for
    ``set_filter`` the filter applied.
    """
    loop = asyncio.get_running_loop()
    painted: asyncio.Future[float] = loop.create_future()

    def done() -> None:
        if not painted.done():
            painted.set_result(time.perf_counter())

    def mark() -> None:
        app.call_after_refresh(done)

    name = "_dispatch_action" if hook == "action" else "set_filter"
    original = getattr(app, name)
    if hook == "action":

        async def timed_action(*args: Any, **kw: Any) -> Any:
            out = await original(*args, **kw)
            mark()
            return out

        setattr(app, name, timed_action)
    else:

        def timed(*args: Any, **kw: Any) -> Any:
            out = original(*args, **kw)
            mark()
            return out

        setattr(app, name, timed)
    try:
        t0 = time.perf_counter()
        _post_key(app, key)
        t1 = await asyncio.wait_for(painted, 10)
    except TimeoutError:
        return float("nan")
    finally:
        delattr(app, name)  # back to the class's method
    return (t1 - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.console_driver")
    ap.add_argument("--redis", required=True)
    ap.add_argument("--prefix", default="iii:")
    ap.add_argument("--ready", required=True)
    ap.add_argument("--stop", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seconds", type=float, default=180)
    ap.add_argument("--presses", type=int, default=24, help="timed key presses, spread over --feed-seconds")
    ap.add_argument("--feed-seconds", type=float, default=60)
    ap.add_argument("--profile-keys", type=Path, default=None, help="cProfile the UI thread from each press to its repaint")
    a = ap.parse_args(argv)
    result = asyncio.run(
        drive(a.redis, a.prefix, Path(a.ready), Path(a.stop), a.max_seconds, a.presses, a.feed_seconds, a.profile_keys)
    )
    Path(a.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
