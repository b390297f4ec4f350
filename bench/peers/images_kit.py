"""What the image peers share with the example: its Pillow code, and where the bench keeps marks.

The peers render with ``examples/images/steps/picture_kit`` itself, so every contender
decodes, resizes and encodes exactly the same way; only the queueing around it differs.
Renders are written next to each other in ``BENCH_IMAGES_OUT`` (bytes on disk, paths in
messages), and each image's completion callback records its wall-clock time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench.work import client

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "examples" / "images" / "steps"))

from picture_kit import SIZES, probe, render  # noqa: E402  (the example's own module)

#: Hash: image id → completion time (s since the epoch), written by each peer's callback.
DONE = "bench:images:done"
#: Set of worker pids that answered a ping (all processes up before the clock starts).
PIDS = "bench:images:pids"

__all__ = ["SIZES", "probe", "probe_file", "record_done", "record_pid", "render", "render_to_file"]


def probe_file(path: str) -> dict:
    with open(path, "rb") as fh:
        return probe(fh)


def render_to_file(path: str, image_id: str, size: str, box: int) -> dict:
    """One size of one image into ``BENCH_IMAGES_OUT``; returns where it went and its size."""
    with open(path, "rb") as fh:
        body, content_type, (width, height) = render(fh, box)
    ext = "webp" if content_type == "image/webp" else "jpg"
    out = Path(os.environ["BENCH_IMAGES_OUT"]) / f"{image_id}-{size}.{ext}"
    tmp = out.with_name("." + out.name)
    tmp.write_bytes(body)
    os.replace(tmp, out)
    return {"path": str(out), "width": width, "height": height}


def record_done(image_id: str) -> None:
    client().hset(DONE, image_id, repr(time.time()))


def record_pid() -> None:
    client().sadd(PIDS, os.getpid())
