#!/usr/bin/env python3
"""Screenshots of the console while an example runs, for the examples' READMEs.

    .venv/bin/python scripts/screenshots_examples.py [--only NAME]... [--size 160x45]

Copies ``examples/NAME`` (images, email, data, reports, cleanup) to a temporary directory, runs
it for real in-process as ``scripts/screenshots.py`` runs the seed project (embedded Redis,
HTTP server, worker processes), sends it work (for email, to an aiosmtpd server in this process
that answers ``550`` for some addresses and ``451`` once for others; for data, a CSV with bad
rows; for reports, a year of monthly reports; for cleanup, old rows, blobs and state to sweep
on a fast schedule with one sweep's lease held), and saves a view mid-run as
``screenshots/examples-NAME.svg`` (and a PNG where ``rsvg-convert`` or Chromium is found).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from screenshots import to_png, wait  # noqa: E402  (the seed's screenshot helpers)

NAMES = ["images", "email", "data", "reports", "cleanup"]


#: The examples shown in the Live log rather than Messages, and the filter that tells their story.
LIVE_FILTERS = {
    "cleanup": "type:cleanup.swept,progress",
    "data": "type:progress,message.processed,message.started,data.",
}


def _images() -> list[tuple[str, bytes, str]]:
    from PIL import Image, ImageDraw

    out: list[tuple[str, bytes, str]] = []
    for i, (w, h) in enumerate([(2400, 1600), (1800, 1200), (1200, 1600), (2000, 2000)]):
        img = Image.new("RGB", (w, h), (30 + 40 * i, 90, 200 - 30 * i))
        ImageDraw.Draw(img).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(240, 200, 40))
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6 if i == 0 else 1
        img.save(buf, "JPEG", exif=exif, quality=85)
        out.append((f"photo-{i + 1}.jpg", buf.getvalue(), "image/jpeg"))
    logo = Image.new("RGBA", (600, 400), (0, 0, 0, 0))
    ImageDraw.Draw(logo).rectangle((100, 100, 500, 300), fill=(0, 160, 90, 255))
    buf = io.BytesIO()
    logo.save(buf, "PNG")
    out.append(("logo.png", buf.getvalue(), "image/png"))
    out.append(("broken.jpg", out[0][1][:20_000], "image/jpeg"))
    return out


async def images_traffic(base: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for name, body, ctype in _images():
            resp = await client.post(
                "/images", content=body, headers={"content-type": ctype, "content-disposition": f'attachment; filename="{name}"'}
            )
            resp.raise_for_status()
            await asyncio.sleep(0.2)
        await client.post("/images", content=_images()[1][1], headers={"content-type": "image/jpeg"})  # a resubmit


class _Smtp:
    """aiosmtpd handler: 550 for bounce*, 451 once for slow*, else accepted after a short pause."""

    def __init__(self) -> None:
        self.deferred: set[str] = set()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("bounce"):
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        if address.startswith("slow") and address not in self.deferred:
            self.deferred.add(address)
            return "451 4.7.1 Greylisted, please try again in 3 seconds"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.06)
        return "250 Message accepted"


async def email_traffic(base: str) -> None:
    import httpx

    recipients = []
    for i in range(150):
        domain = ("example.org", "example.net", "mail.test")[i % 3]
        local = "bounce" if i % 41 == 5 else "slow" if i % 37 == 8 else "reader"
        recipients.append({"email": f"{local}{i}@{domain}", "name": f"Reader {i}"})
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        resp = await client.post(
            "/campaigns",
            headers={"idempotency-key": "december-news"},
            json={
                "subject": "December news for $name",
                "template": "Hello $name,\nthe news for $email.\n",
                "batch_size": 10,
                "recipients": recipients,
            },
        )
        resp.raise_for_status()


def _orders_csv(n: int = 6000) -> bytes:
    """Orders with a bad record every so often: a missing customer, a bad amount, a bad date."""
    lines = ["id,customer,note,amount,placed_on"]
    for i in range(1, n + 1):
        customer, amount, day = f"Customer {i % 97}", f"{(i * 37) % 5000 / 7:.2f}", f"2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}"
        if i % 331 == 7:
            customer = ""
        elif i % 419 == 11:
            amount = "12.5x"
        elif i % 503 == 13:
            day = "2026-02-30"
        lines.append(f'{i},{customer},"gift wrap, please",{amount},{day}')
    return ("\n".join(lines) + "\n").encode()


async def data_traffic(base: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        resp = await client.post(
            "/imports",
            content=_orders_csv(),
            headers={"content-type": "text/csv", "content-disposition": 'attachment; filename="orders.csv"'},
        )
        resp.raise_for_status()


async def reports_traffic(base: str) -> None:
    import calendar

    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for month in range(1, 13):
            end = calendar.monthrange(2026, month)[1]
            period = {"start": f"2026-{month:02d}-01", "end": f"2026-{month:02d}-{end:02d}"}
            for _ in range(2 if month == 11 else 1):  # November asked for twice: one build
                (await client.post("/reports", json=period)).raise_for_status()


def _seed_cleanup(project: Path, sup: Any) -> Any:
    """Old rows, blobs, finished state and an old dead letter to sweep; the state sweep's lease held."""
    import sqlite3
    import time

    from iii_console.core.blobs import BlobStore
    from iii_console.core.dlq import DeadLetter
    from iii_console.core.lease import Leases

    day_ms, now_ms = 86_400_000, int(time.time() * 1000)
    (project / ".iii").mkdir(exist_ok=True)
    with sqlite3.connect(project / ".iii" / "cleanup.sqlite") as db:
        db.execute("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, created_ms BIGINT NOT NULL, message TEXT NOT NULL)")
        db.executemany(
            "INSERT INTO audit_log (created_ms, message) VALUES (?, ?)",
            [(now_ms - 40 * day_ms, "old")] * 24_000 + [(now_ms - day_ms, "new")] * 500,
        )
    store = BlobStore.from_config("", project / ".iii")
    month_ago = time.time() - 30 * 86400
    for i in range(12):
        ref = store.put(f"export {i}\n".encode() * 4000, name=f"export-{i}.csv")
        if i < 9:
            os.utime(store.path(ref), (month_ago, month_ago))
    c, keys = sup.services.client, sup.services.keys
    entry = DeadLetter(id="d-old", dlq="data.dlq", error="boom", data={}, last_failure_ms=now_ms - 20 * day_ms)
    c.hset(keys.dlq_entries("data.dlq"), "d-old", entry.encode())
    c.zadd(keys.dlq("data.dlq"), {"d-old": entry.last_failure_ms})
    c.sadd(keys.dlq_names, "data.dlq")
    return Leases(c, keys).acquire("cleanup.state", 120_000)  # PruneState's runs skip while this is held


async def shoot(name: str, out: Path, size: tuple[int, int]) -> list[Path]:
    from iii_console.core.config import load_config
    from iii_console.runtime.supervisor import Supervisor
    from iii_console.tui import create_app
    from iii_console.tui.filter import EventFilter

    with tempfile.TemporaryDirectory(prefix=f"iii-shots-{name}-") as tmp:
        project = Path(tmp) / name
        shutil.copytree(
            ROOT / "examples" / name, project, ignore=shutil.ignore_patterns(".iii", "inbox", "Maildir", "__pycache__")
        )
        controller = None
        if name == "images":
            os.environ["IMAGES_SLOW_MS"] = "2500"  # renders stay on screen with their progress
            os.environ["IMAGES_INBOX"] = str(Path(tmp) / "inbox")
        elif name == "data":
            os.environ["DATA_CHUNK_ROWS"] = "400"
            os.environ["DATA_CHUNK_PAUSE_MS"] = "1500"  # chunks stay on screen while they commit
        elif name == "cleanup":
            os.environ["CLEANUP_CRON"] = "*/5 * * * * *"
            os.environ["CLEANUP_ROW_BATCH"] = "2000"
        elif name == "email":
            from aiosmtpd.controller import Controller

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            controller = Controller(_Smtp(), hostname="127.0.0.1", port=port)
            controller.start()
            os.environ["SMTP_URL"] = f"smtp://127.0.0.1:{port}"
        cfg = load_config(project / "iii-config.yaml", env={}).with_overrides(**{"server.port": 0})
        sup = Supervisor(cfg)
        await sup.start()
        lease = _seed_cleanup(project, sup) if name == "cleanup" else None
        try:
            base = f"http://127.0.0.1:{sup.port}"
            app = create_app(redis_url=sup.config.redis.url, server_url=base, title=f"iii-console · examples/{name}")
            app.where = "redis://127.0.0.1 (embedded) iii:"
            async with app.run_test(size=size) as pilot:
                await wait(pilot, lambda: app.ready and app.link.connected, "the console")
                model = app.model
                if name == "images":
                    await images_traffic(base)
                    await wait(pilot, lambda: model.tiles["dead-lettered"].total >= 1, "the broken image's dead letter")
                    await wait(
                        pilot,
                        lambda: (
                            sum(1 for r in model.messages.values() if r.step == "RenderImage" and r.status == "processed") >= 3
                            and any(
                                r.step == "RenderImage" and r.status == "running" and r.progress for r in model.messages.values()
                            )
                        ),
                        "renders done and running",
                        timeout=60,
                    )
                elif name == "data":
                    await data_traffic(base)
                    await wait(
                        pilot,
                        lambda: (
                            sum(1 for r in model.messages.values() if r.step == "ImportChunk" and r.status == "processed") >= 4
                            and any(r.step == "ImportChunk" and r.status == "running" for r in model.messages.values())
                        ),
                        "chunks committed and running",
                        timeout=60,
                    )
                elif name == "reports":
                    await reports_traffic(base)
                    await wait(
                        pilot,
                        lambda: (
                            sum(1 for r in model.messages.values() if r.step == "BuildReport" and r.status == "processed") >= 3
                            and any(
                                r.step == "BuildReport" and r.status == "running" and r.progress for r in model.messages.values()
                            )
                        ),
                        "reports built and building",
                        timeout=90,
                    )
                elif name == "cleanup":
                    await wait(
                        pilot,
                        lambda: sum(1 for r in model.messages.values() if r.status == "processed") >= 12,
                        "three rounds of sweeps",
                        timeout=60,
                    )
                else:
                    await email_traffic(base)
                    await wait(
                        pilot,
                        lambda: (
                            any(r.status == "throttled" for r in model.messages.values())
                            and sum(1 for r in model.messages.values() if r.step == "SendBatch" and r.status == "processed") >= 4
                            and any(r.step == "SendBatch" and r.status == "running" for r in model.messages.values())
                        ),
                        "batches sent, sending and throttled",
                        timeout=60,
                    )
                if name in LIVE_FILTERS:  # the story is in the Live log's lines: the whole width for them
                    await pilot.press("1")
                    app.filter = EventFilter.parse(LIVE_FILTERS[name])
                    app.query_one("#problems").display = False
                else:
                    await pilot.press("2")
                start = app.render_count
                await wait(pilot, lambda: app.render_count >= start + 3, "a few render ticks")
                path = out / f"examples-{name}.svg"
                paths = [path]
                app.save_screenshot(filename=path.name, path=str(out))
                print(f"screenshots: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
                if name == "reports":  # and the finished reports in State, with their PDF, HTML and chart refs
                    await pilot.press("5")
                    start = app.render_count
                    await wait(pilot, lambda: app.render_count >= start + 3, "a few render ticks")
                    extra = out / "examples-reports-state.svg"
                    app.save_screenshot(filename=extra.name, path=str(out))
                    print(f"screenshots: {extra.relative_to(ROOT) if extra.is_relative_to(ROOT) else extra}")
                    paths.append(extra)
                await pilot.press("q")
        finally:
            if lease is not None:
                lease.release()
            await sup.stop()
            if controller is not None:
                controller.stop()
    return paths


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's line per SMTP command
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "screenshots"), help="Directory for the SVG/PNG files.")
    parser.add_argument("--size", default="160x45", help="Terminal size, COLSxROWS.")
    parser.add_argument("--only", choices=NAMES, action="append", help="Just this example; repeatable.")
    args = parser.parse_args()
    cols, rows = (int(x) for x in args.size.lower().split("x"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    svgs = [svg for name in (args.only or NAMES) for svg in asyncio.run(shoot(name, out, (cols, rows)))]
    to_png(svgs)


if __name__ == "__main__":
    main()
