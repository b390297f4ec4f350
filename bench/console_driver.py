"""Runs the live console in its own process for the console scenario (``python -m bench.console_driver``).

The app is the one the CLI builds (``iii_console.tui.app.create_app``), run
headless by Textual's test harness at 160×48: it still composes and renders
every frame, it only does not write them to a terminal. While it runs this
process records, once a second, how many events the console has taken into its
model and how many render ticks it has done, and every few seconds presses a
tab key and times key → handled → next screen refresh. It stops when the
harness creates ``--stop`` (or after ``--max-seconds``) and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

KEY_EVERY_S = 3.0


async def drive(url: str, prefix: str, ready: Path, stop: Path, max_s: float) -> dict[str, Any]:
    from iii_console.tui.app import create_app

    app = create_app(redis_url=url, prefix=prefix)
    samples: list[tuple[float, int, int]] = []
    keys: list[float] = []
    async with app.run_test(headless=True, size=(160, 48)) as pilot:
        await pilot.pause(0.5)
        ready.write_text("ready")
        t_end = time.monotonic() + max_s
        next_key = time.monotonic() + KEY_EVERY_S
        tab = "2"
        while not stop.exists() and time.monotonic() < t_end:
            model = getattr(app, "model", None)
            samples.append((time.time(), getattr(model, "seq", -1), getattr(app, "render_count", -1)))
            if time.monotonic() >= next_key:
                keys.append(await _key_to_repaint(app, pilot, tab))
                tab = "1" if tab == "2" else "2"
                next_key = time.monotonic() + KEY_EVERY_S
            await asyncio.sleep(1.0)
        model = getattr(app, "model", None)
        samples.append((time.time(), getattr(model, "seq", -1), getattr(app, "render_count", -1)))
        return {"samples": samples, "key_ms": keys, "inbox_peak": getattr(app, "inbox_peak", None)}


async def _key_to_repaint(app: Any, pilot: Any, key: str) -> float:
    """Milliseconds from a key press to the first screen refresh after its action ran.

    The key is posted like a terminal's (``simulate_key``), not with
    ``pilot.press``, which also waits for the whole app to go idle.
    """
    action = getattr(app, "action_show_tab", None)
    if action is None:
        return float("nan")
    loop = asyncio.get_running_loop()
    painted: asyncio.Future[float] = loop.create_future()

    def timed(*args: Any, **kw: Any) -> Any:
        out = action(*args, **kw)
        app.call_after_refresh(lambda: painted.done() or painted.set_result(time.perf_counter()))
        return out

    app.action_show_tab = timed
    try:
        t0 = time.perf_counter()
        app.simulate_key(key)
        t1 = await asyncio.wait_for(painted, 10)
    except TimeoutError:
        return float("nan")
    finally:
        del app.action_show_tab  # back to the class's method
    return (t1 - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.console_driver")
    ap.add_argument("--redis", required=True)
    ap.add_argument("--prefix", default="iii:")
    ap.add_argument("--ready", required=True)
    ap.add_argument("--stop", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seconds", type=float, default=180)
    a = ap.parse_args(argv)
    result = asyncio.run(drive(a.redis, a.prefix, Path(a.ready), Path(a.stop), a.max_seconds))
    Path(a.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
