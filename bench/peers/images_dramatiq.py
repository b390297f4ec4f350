"""The image pipeline on Dramatiq, as its users write it: a probe actor, then a ``group`` of
render messages (one per size) with a completion callback. Group callbacks need the
``GroupCallbacks`` middleware with a rate-limiter backend (its barrier), and the renders' results
go to the ``Results`` middleware; both on Redis, as Dramatiq's documentation sets them up.

Run with ``dramatiq bench.peers.images_dramatiq --processes 2 --threads 4``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as ResultBackend

from bench.peers.images_kit import SIZES, probe_file, record_done, record_pid, render_to_file

URL = os.environ["BENCH_REDIS_URL"]
broker = RedisBroker(url=URL, namespace="bench-images")
broker.add_middleware(Results(backend=ResultBackend(url=URL, namespace="bench-images-results")))
broker.add_middleware(GroupCallbacks(RateLimiterBackend(url=URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="images", max_retries=2)
def probe_image(path: str, image_id: str) -> None:
    probe_file(path)  # a corrupt file raises here, before any render
    renders = dramatiq.group(render_image.message(path, image_id, s.name, s.box) for s in SIZES)
    renders.add_completion_callback(image_done.message(image_id))
    renders.run()


@dramatiq.actor(queue_name="images", max_retries=2, store_results=True)
def render_image(path: str, image_id: str, size: str, box: int) -> dict:
    return render_to_file(path, image_id, size, box)


@dramatiq.actor(queue_name="images", max_retries=2)
def image_done(image_id: str) -> None:
    record_done(image_id)


@dramatiq.actor(queue_name="images", max_retries=0)
def ping() -> None:
    record_pid()
