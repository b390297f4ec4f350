"""One size of one image: upright, fit in its box, alpha kept, written to the blob store."""

import os
import time
from pathlib import PurePath

from picture_kit import render

from iii_console import Step, queue

config = Step(
    name="RenderImage",
    description="Renders one size (EXIF orientation applied; WebP with alpha, else JPEG)",
    triggers=[queue("images.render")],
    enqueues=[],
    flows=["images"],
)


def handler(job, ctx):
    ctx.progress(0, 3, note=f"{job['size']}: decoding")
    with ctx.blobs.open(job["image"]) as fh:
        body, content_type, (width, height) = render(fh, job["box"])
    ctx.progress(1, 3, note=f"{job['size']}: encoded {width}x{height}")
    slow = float(os.environ.get("IMAGES_SLOW_MS", "0")) / 1000  # to watch renders run in the console
    if slow:
        time.sleep(slow)
    stem = PurePath(job["image"].get("name") or job["id"]).stem
    ext = "webp" if content_type == "image/webp" else "jpg"
    out = ctx.blobs.put(body, content_type=content_type, name=f"{stem}-{job['size']}.{ext}")
    ctx.state.update(
        "images",
        job["id"],
        [{"type": "set", "path": ["renders", job["size"]], "value": {"blob": out, "width": width, "height": height}}],
    )
    ctx.progress(3, 3, note=f"{job['size']}: stored")
