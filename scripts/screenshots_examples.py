#!/usr/bin/env python3
"""Screenshots of the console while an example runs, for the examples' READMEs.

    .venv/bin/python scripts/screenshots_examples.py [--only images|email] [--size 160x45]

Copies ``examples/images`` or ``examples/email`` to a temporary directory, runs it for real
in-process as ``scripts/screenshots.py`` runs the seed project (embedded Redis, HTTP server,
worker processes), sends it work (for email, to an aiosmtpd server in this process that
answers ``550`` for some addresses and ``451`` once for others), and saves the Messages view
mid-run as ``screenshots/examples-NAME.svg`` (and a PNG where ``rsvg-convert`` is found).
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


async def shoot(name: str, out: Path, size: tuple[int, int]) -> Path:
    from iii_console.core.config import load_config
    from iii_console.runtime.supervisor import Supervisor
    from iii_console.tui import create_app

    with tempfile.TemporaryDirectory(prefix=f"iii-shots-{name}-") as tmp:
        project = Path(tmp) / name
        shutil.copytree(
            ROOT / "examples" / name, project, ignore=shutil.ignore_patterns(".iii", "inbox", "Maildir", "__pycache__")
        )
        controller = None
        if name == "images":
            os.environ["IMAGES_SLOW_MS"] = "2500"  # renders stay on screen with their progress
            os.environ["IMAGES_INBOX"] = str(Path(tmp) / "inbox")
        else:
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
                await pilot.press("2")
                start = app.render_count
                await wait(pilot, lambda: app.render_count >= start + 3, "a few render ticks")
                path = out / f"examples-{name}.svg"
                app.save_screenshot(filename=path.name, path=str(out))
                print(f"screenshots: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
                await pilot.press("q")
        finally:
            await sup.stop()
            if controller is not None:
                controller.stop()
    return path


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's line per SMTP command
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "screenshots"), help="Directory for the SVG/PNG files.")
    parser.add_argument("--size", default="160x45", help="Terminal size, COLSxROWS.")
    parser.add_argument("--only", choices=["images", "email"], action="append", help="Just this example; repeatable.")
    args = parser.parse_args()
    cols, rows = (int(x) for x in args.size.lower().split("x"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    svgs = [asyncio.run(shoot(name, out, (cols, rows))) for name in (args.only or ["images", "email"])]
    to_png(svgs)


if __name__ == "__main__":
    main()
