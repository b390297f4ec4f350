"""The image pipeline on Celery, as its users write it: a probe task, then a ``chord`` of a
``group`` of render tasks (one per size) with a completion callback. Redis is the transport and
the result backend (the chord counts its finished parts there).

Run with ``celery -A bench.peers.images_celery worker -P threads -c 4``.
"""

from __future__ import annotations

import os

from celery import Celery, chord, group

from bench.peers.images_kit import SIZES, probe_file, record_done, record_pid, render_to_file

app = Celery("bench_images", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True, result_expires=3600, task_acks_late=True
)


@app.task(name="images.probe")
def probe_image(path: str, image_id: str) -> dict:
    info = probe_file(path)  # a corrupt file raises here, before any render
    chord(group(render_image.s(path, image_id, s.name, s.box) for s in SIZES))(image_done.s(image_id))
    return info


@app.task(name="images.render")
def render_image(path: str, image_id: str, size: str, box: int) -> dict:
    return render_to_file(path, image_id, size, box)


@app.task(name="images.done")
def image_done(renders: list[dict], image_id: str) -> None:
    record_done(image_id)


@app.task(name="images.ping")
def ping() -> None:
    record_pid()
