"""examples/images end to end: uploads and an inbox, a probe that fans out one render per size, renders
upright with alpha kept, bad images dead-lettered at once, resubmits deduplicated, and one completion per
image even when a worker is SIGKILLed mid-render. Real server, real worker processes, real Pillow."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import time

import pytest
from PIL import Image

from iii_console.testing import IIIApp

from ..helpers import ROOT, wait_for


def jpeg_with_orientation_6() -> bytes:
    """2400x1600 as stored, top rows red: displayed (rotated a quarter turn clockwise) 1600x2400, red on the right."""
    img = Image.new("RGB", (2400, 1600), (20, 90, 200))
    img.paste((230, 20, 20), (0, 0, 2400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif, quality=90)
    return out.getvalue()


def rgba_png() -> bytes:
    img = Image.new("RGBA", (300, 200), (0, 160, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 150, 200))  # the left half fully transparent
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def small_png(size: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def kit(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "images" / "steps"))
    import picture_kit

    return picture_kit


def oriented(orientation: int) -> bytes:
    """400x200 as stored, its top-left quarter red, with that EXIF orientation."""
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


@pytest.mark.parametrize(
    "orientation, size, red_at",
    [
        (1, (400, 200), (10, 10)),  # as stored
        (3, (400, 200), (390, 190)),  # upside down
        (6, (200, 400), (190, 10)),  # a quarter turn clockwise
        (8, (200, 400), (10, 390)),  # a quarter turn counter-clockwise
    ],
)
def test_renders_are_upright_whatever_the_exif_orientation(kit, orientation, size, red_at):
    assert (kit.probe(io.BytesIO(oriented(orientation)))["width"], kit.probe(io.BytesIO(oriented(orientation)))["height"]) == size
    body, content_type, got = kit.render(io.BytesIO(oriented(orientation)), 400)
    img = Image.open(io.BytesIO(body))
    assert content_type == "image/jpeg" and got == img.size == size
    r, _g, b = img.getpixel(red_at)
    assert r > 200 and b < 60, (orientation, img.getpixel(red_at))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_kept_in_every_mode_that_has_it(kit, mode):
    img = Image.new("RGBA", (100, 100), (0, 128, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 50, 100))
    src = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "P":
        src.info["transparency"] = src.getpixel((10, 10))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    body, content_type, _ = kit.render(io.BytesIO(buf.getvalue()), 50)
    out = Image.open(io.BytesIO(body))
    assert content_type == "image/webp" and out.mode == "RGBA"
    assert out.getpixel((5, 25))[3] == 0 and out.getpixel((45, 25))[3] == 255


@pytest.mark.parametrize(("mode", "fmt", "top"), [("I;16", "PNG", 65535), ("I", "TIFF", 2**20), ("F", "TIFF", 0.001)])
def test_deep_greyscale_renders_with_its_levels_scaled_not_clipped(kit, mode, fmt, top):
    """Given a left-to-right gradient in 16-bit, 32-bit or float greyscale, when rendered, then the output runs from
    dark on the left to bright on the right (Pillow's plain conversion clips at 255: 16-bit came out white, float
    black)."""
    w, h = 256, 32
    src = Image.new("I" if mode == "I;16" else mode, (w, h))
    src.putdata([x / (w - 1) * top for _y in range(h) for x in range(w)])
    if mode == "I;16":
        src = src.convert("I;16")
    buf = io.BytesIO()
    src.save(buf, fmt)
    body, content_type, size = kit.render(io.BytesIO(buf.getvalue()), 128)
    out = Image.open(io.BytesIO(body)).convert("L")
    assert content_type == "image/jpeg" and size == (128, 16)
    left, middle, right = (out.getpixel((x, 8)) for x in (2, 64, 125))
    assert left < 20 and 90 < middle < 170 and right > 235, (mode, left, middle, right)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "not an image"),
        (small_png(64, (9, 9, 9))[:45] + b"\xff" * 30 + small_png(64, (9, 9, 9))[75:], "corrupt image"),  # a broken chunk
        (jpeg_with_orientation_6()[:3000], "truncated"),
        (small_png(3000, (0, 0, 0)), "decompression bomb: 3000x3000"),
    ],
)
def test_bad_images_raise_a_non_retryable_error_saying_why(kit, monkeypatch, body, reason):
    monkeypatch.setenv("IMAGES_MAX_PIXELS", "5000000")
    with pytest.raises(kit.BadImage, match=reason) as info:
        kit.probe(io.BytesIO(body))
    assert info.value.retryable is False


@pytest.fixture
def app(tmp_path, redis_server, monkeypatch):
    project = tmp_path / "images"
    shutil.copytree(ROOT / "examples" / "images", project, ignore=shutil.ignore_patterns(".iii", "inbox", "__pycache__"))
    (tmp_path / "inbox").mkdir()
    monkeypatch.setenv("IMAGES_INBOX", str(tmp_path / "inbox"))
    monkeypatch.setenv("IMAGES_MAX_PIXELS", "5000000")  # the 3000x3000 "bomb" is over it, the photo is not
    monkeypatch.setenv("IMAGES_SLOW_MS", "700")  # renders last long enough to be killed in the middle
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    running = IIIApp(project, redis_server.url).start()
    yield running
    running.stop()


def upload(app: IIIApp, body: bytes, name: str, content_type: str) -> dict:
    resp = app.post(
        "/images", content=body, headers={"content-type": content_type, "content-disposition": f'attachment; filename="{name}"'}
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


@pytest.mark.slow
def test_the_image_pipeline(app, tmp_path):
    photo = jpeg_with_orientation_6()
    sent = {
        "photo": upload(app, photo, "photo.jpg", "image/jpeg"),
        "logo": upload(app, rgba_png(), "logo.png", "image/png"),
        "truncated": upload(app, photo[: len(photo) // 2], "cut.jpg", "image/jpeg"),
        "bomb": upload(app, small_png(3000, (0, 0, 0)), "bomb.png", "image/png"),
    }
    for which in ("truncated", "bomb"):
        app.wait_for("message.dead_lettered", trace=sent[which]["trace_id"])

    # SIGKILL a worker process in the middle of a render (renders pause 700 ms after decoding).
    def just_started():
        done = {e.message_id for e in app.events("message.processed", step="RenderImage")}
        return next(
            (
                e
                for e in app.events("message.started", step="RenderImage")
                if e.message_id not in done and time.time() * 1000 - e.ts < 400
            ),
            None,
        )

    victim = wait_for(just_started, timeout=20, interval=0.02, what="a render just started")
    os.kill(int(victim.worker.split(":")[-2]), signal.SIGKILL)
    (tmp_path / "inbox" / "drop.png").write_bytes(small_png(64, (200, 200, 0)))  # the cron step picks it up

    ready = [app.wait_for("image.ready", count=n, timeout=40) for n in (1, 2, 3)][-1]
    assert ready is not None
    app.wait_for("message.redelivered", step="RenderImage")

    # Sizes and orientation: displayed upright, longest side per size, red band on the right.
    rec = app.state.get("images", sent["photo"]["image"])
    assert (rec["status"], rec["width"], rec["height"], rec["format"]) == ("done", 1600, 2400, "JPEG")
    assert {k: (v["width"], v["height"]) for k, v in rec["renders"].items()} == {
        "thumb": (107, 160),
        "medium": (533, 800),
        "large": (1067, 1600),
    }
    large = app.request("GET", f"/images/{sent['photo']['image']}/large")
    assert large.status_code == 200 and large.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(large.content))
    assert img.size == (1067, 1600) and img.getexif().get(0x0112) is None
    right, left = img.getpixel((1060, 800)), img.getpixel((10, 800))
    assert right[0] > 180 and right[2] < 80 and left[2] > 150, (right, left)

    # Alpha kept: WebP with the transparent half still transparent.
    logo = app.state.get("images", sent["logo"]["image"])
    assert logo["alpha"] is True and logo["status"] == "done"
    thumb = app.request("GET", f"/images/{sent['logo']['image']}/thumb")
    assert thumb.headers["content-type"] == "image/webp"
    img = Image.open(io.BytesIO(thumb.content))
    assert (img.format, img.mode, img.size) == ("WEBP", "RGBA", (160, 107))
    assert img.getpixel((10, 50))[3] == 0 and img.getpixel((150, 50))[3] == 255

    # The inbox file went through the same pipeline and left the inbox.
    assert next(r for r in app.state.list("images").values() if r["name"] == "drop.png")["status"] == "done"
    assert list((tmp_path / "inbox").iterdir()) == []

    # Corrupt and oversized images: dead-lettered after one attempt, with the reason.
    dead = {d.trace_id: d for d in app.dead_letters("images.dlq")}
    for which, reason in (("truncated", "truncated"), ("bomb", "decompression bomb")):
        letter = dead[sent[which]["trace_id"]]
        assert letter.attempts == 1 and reason in letter.error and letter.step == "ProbeImage", letter
        assert len(app.events("message.started", trace=sent[which]["trace_id"])) == 1
        status = app.request("GET", sent[which]["status_url"])  # not "it may still be queued", for good
        assert status.status_code == 200 and status.json()["status"] == "failed" and reason in status.json()["error"]
    assert len(dead) == 2

    # Resubmitting the same bytes enqueues nothing.
    submitted = len([e for e in app.events("message.enqueued") if e.topic == "images.submitted"])
    again = upload(app, photo, "photo-again.jpg", "image/jpeg")
    app.wait_for("message.deduplicated", trace=again["trace_id"])
    assert len([e for e in app.events("message.enqueued") if e.topic == "images.submitted"]) == submitted == 5

    # Thumbnails first, and every message small: data travels by blob ref.
    renders = [e for e in app.events("message.enqueued") if e.topic == "images.render"]
    assert {e.data["payload"]["size"]: e.data["priority"] for e in renders} == {
        "thumb": "high",
        "medium": "normal",
        "large": "low",
    }
    sizes = [len(json.dumps(e.data["payload"])) for e in app.events("message.enqueued")]
    assert max(sizes) < 1024, max(sizes)

    # One completion per image, the kill notwithstanding.
    assert len(app.events("group.completed")) == 3
    assert len(app.events("message.processed", step="ImageDone")) == 3
    assert sorted(e.data["status"] for e in app.events("image.ready")) == ["done"] * 3
