#!/usr/bin/env python3
"""Screenshots of the live console on a real running project, for the README and reviews.

    .venv/bin/python scripts/screenshots.py [--out screenshots] [--size 160x45] [--only VIEW]...

Copies the seed project (steps/ and iii-config.yaml) to a temporary directory, adds one
demo cron step so the Cron tab has runs to show, starts the real runtime in-process
(embedded Redis, HTTP server, worker process, scheduler), sends traffic through
``POST /messages`` (normal, high and low priority, some with ``fail_times`` so there are
retries and a dead letter), then drives the console with Pilot to each view and saves
``<out>/<view>.svg`` (with ``--only``, just those views). PNGs are written too when ``rsvg-convert`` (Debian: librsvg2-bin) or
a headless Chromium is found; otherwise that step is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_CRON_STEP = '''
"""Demo only (added by scripts/screenshots.py): a cron step that fires every 3 seconds."""

from iii_console import Step, cron

config = Step(name="Heartbeat", description="Demo: logs a tick every 3 seconds", triggers=[cron("*/3 * * * * *")],
              flows=["demo"])


def handler(tick, ctx):
    ctx.logger.info("tick", scheduled_ms=tick.scheduled_ms)
'''

DEMO_SLOW_STEP = '''
"""Demo only (added by scripts/screenshots.py): a long import, so a worker can be killed holding it."""

import time

from iii_console import Step, http, queue

config = Step(name="ImportBatch", description="Demo: a 3-second import", flows=["demo"],
              triggers=[http("POST", "/demo/import"), queue("demo.import")], enqueues=["demo.import"])


def handler(data, ctx):
    if ctx.trigger.get("type") == "http":
        ctx.enqueue("demo.import", {"batch": "2026-12"})
        return {"status": 202, "body": {}}
    time.sleep(3)
'''

CONFIG = """
redis:
  url: ""
server:
  host: 127.0.0.1
  port: 0
queues:
  default:
    max_retries: 3
    retry_delay: 1000
    backoff: exponential
    concurrency: 10
    dead_letter_queue: dead-letters
  message.sent:
    max_retries: 2
    retry_delay: 300
    backoff: exponential
    concurrency: 4
    dead_letter_queue: message.sent.dlq
workers:
  shutdown_timeout: 5
"""


def make_project(root: Path) -> Path:
    shutil.copytree(ROOT / "steps", root / "steps")
    (root / "steps" / "heartbeat_step.py").write_text(textwrap.dedent(DEMO_CRON_STEP))
    (root / "steps" / "import_batch_step.py").write_text(textwrap.dedent(DEMO_SLOW_STEP))
    (root / "iii-config.yaml").write_text(CONFIG)
    return root / "iii-config.yaml"


async def traffic(base: str) -> None:
    import httpx

    bodies: list[dict[str, Any]] = []
    for i in range(18):
        bodies.append(
            {"text": f"hello number {i}", "priority": ("normal", "high", "low")[i % 3], "recipient": f"user{i}@example.com"}
        )
    bodies.insert(4, {"text": "flaky once", "fail_times": 1})
    bodies.insert(9, {"text": "flaky twice", "fail_times": 2, "priority": "high"})
    bodies.insert(12, {"text": "always fails", "fail_times": 9})
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for body in bodies:
            (await client.post("/messages", json=body)).raise_for_status()
            await asyncio.sleep(0.08)


async def wait(pilot: Any, cond: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out waiting for {what}")
        await pilot.pause(0.1)


async def shoot(out: Path, size: tuple[int, int], only: set[str] | None = None) -> list[Path]:
    from textual.widgets import Input

    from iii_console.core.config import load_config
    from iii_console.runtime.supervisor import Supervisor
    from iii_console.tui import create_app
    from iii_console.tui.lines import LineTable
    from iii_console.tui.screens import SendScreen, TraceScreen
    from iii_console.tui.widgets import Table

    saved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="iii-shots-") as tmp:
        cfg = load_config(make_project(Path(tmp)), env={})
        sup = Supervisor(cfg)
        await sup.start()
        try:
            url = sup.config.redis.url
            base = f"http://127.0.0.1:{sup.port}"
            app = create_app(redis_url=url, server_url=base)
            app.where = "redis://127.0.0.1 (embedded) iii:"  # the port changes every run
            async with app.run_test(size=size) as pilot:
                await wait(pilot, lambda: app.ready and app.link.connected, "the console")
                await traffic(base)
                model = app.model
                await wait(
                    pilot,
                    lambda: model.tiles["dead-lettered"].total >= 1 and model.tiles["notifications"].total >= 20,
                    "traffic to settle (a dead letter and the notifications)",
                    timeout=60,
                )
                await wait(pilot, lambda: model.cron.get("Heartbeat") and model.cron["Heartbeat"].fired >= 2, "cron runs")
                # A worker process killed (as the OOM killer would) while it holds a long import:
                # its supervisor gives the message back at once and the Workers view says so.
                import httpx

                async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                    (await client.post("/demo/import", json={})).raise_for_status()
                await wait(
                    pilot,
                    lambda: any(r.step == "ImportBatch" and r.status == "running" for r in model.messages.values()),
                    "the import to start",
                )
                sup.children[0].proc.kill()
                await wait(
                    pilot,
                    lambda: any(r.step == "ImportBatch" and r.status == "processed" for r in model.messages.values()),
                    "the import, redelivered, to finish",
                    timeout=60,
                )
                await pilot.pause(1.0)

                async def save(name: str, before: Callable[[], Awaitable[None]] | None = None) -> None:
                    if before is not None:
                        await before()
                    if only and name not in only:
                        return  # still navigated: later views start from where this one left the console
                    start = app.render_count
                    await wait(pilot, lambda: app.render_count >= start + 3, "a few render ticks")
                    path = out / f"{name}.svg"
                    app.save_screenshot(filename=path.name, path=str(out))
                    saved.append(path)
                    print(f"screenshots: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

                async def tab(key: str, part: str | None = None) -> None:
                    await pilot.press(key)
                    if part:
                        await wait(pilot, lambda: part in app.snap.loaded, f"the {part} snapshot")

                await save("live")
                await save("messages", lambda: tab("2"))

                async def open_trace() -> None:
                    table = app.query_one("#messages-table", LineTable)
                    keys = table.row_keys
                    retried = [
                        k for k in keys if (row := model.messages.get(k)) and row.attempts >= 2 and row.status == "processed"
                    ]
                    table.move_cursor(row=keys.index(retried[0] if retried else keys[0]))
                    await pilot.press("enter")
                    await wait(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.searched, "the trace")
                    timeline = app.screen.query_one("#timeline", Table)
                    kinds = [str(timeline.get_row(r.key)[2]) for r in timeline.ordered_rows]
                    if "message.failed" in kinds:
                        timeline.move_cursor(row=kinds.index("message.failed"))

                await save("trace", open_trace)
                await pilot.press("escape")
                await save("queues", lambda: tab("3", "queues"))
                await save("dead-letters", lambda: tab("4", "dlq"))
                await save("state", lambda: tab("5", "state"))
                await save("cron", lambda: tab("6", "cron"))
                await save("workers", lambda: tab("7", "workers"))
                await save("steps", lambda: tab("8", "registry"))

                async def send_form() -> None:
                    await tab("1")
                    await pilot.press("s")
                    await wait(pilot, lambda: isinstance(app.screen, SendScreen), "the send form")
                    text = app.screen.query_one("#send-text", Input)
                    text.insert_text_at_cursor("hello from the console")
                    text.cursor_blink = False

                await save("send", send_form)
                await pilot.press("escape")

                async def help_screen() -> None:
                    await pilot.press("question_mark")

                await save("help", help_screen)
                await pilot.press("escape")
                await pilot.press("q")
        finally:
            await sup.stop()
    return saved


def to_png(svgs: list[Path]) -> None:
    """Convert with rsvg-convert, else headless Chromium; say so and skip if neither is installed."""
    rsvg = shutil.which("rsvg-convert")
    chrome = next((c for c in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable") if shutil.which(c)), None)
    if not rsvg and not chrome:
        print("screenshots: no rsvg-convert (apt-get install librsvg2-bin) or chromium found; skipping PNGs")
        return
    for svg in svgs:
        png = svg.with_suffix(".png")
        # Rich's SVG pads text with no-break spaces; without xml:space="preserve" rsvg drops leading ones.
        text = svg.read_text().replace("<svg ", '<svg xml:space="preserve" ', 1)
        with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as fixed:
            fixed.write(text)
        try:
            if rsvg:
                subprocess.run([rsvg, "-w", "1600", fixed.name, "-o", str(png)], check=True)
            else:
                assert chrome is not None  # neither found returned above
                subprocess.run(
                    [
                        chrome,
                        "--headless",
                        "--disable-gpu",
                        "--no-sandbox",
                        f"--screenshot={png}",
                        "--window-size=1600,940",
                        f"file://{fixed.name}",
                    ],
                    check=True,
                    capture_output=True,
                )
            print(f"screenshots: {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
        except subprocess.CalledProcessError as exc:
            print(f"screenshots: PNG conversion of {svg.name} failed ({exc}); SVG kept")
        finally:
            Path(fixed.name).unlink(missing_ok=True)


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the traffic's request lines are noise here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "screenshots"), help="Directory for the SVG/PNG files.")
    parser.add_argument("--size", default="160x45", help="Terminal size, COLSxROWS.")
    parser.add_argument(
        "--only",
        action="append",
        metavar="VIEW",
        help="Save just this view (live, messages, trace, queues, dead-letters, state, ...); repeatable.",
    )
    args = parser.parse_args()
    cols, rows = (int(x) for x in args.size.lower().split("x"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    svgs = asyncio.run(shoot(out, (cols, rows), set(args.only or ())))
    to_png(svgs)


if __name__ == "__main__":
    main()
