"""A bare Dramatiq actor on the stock RedisBroker (run with the ``dramatiq`` CLI)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.work import work as _work

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"], namespace="bench-dramatiq")
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="work", max_retries=0)
def work(data: dict) -> None:
    _work(data)


@dramatiq.actor(queue_name="work", priority=0, max_retries=0)
def urgent(data: dict) -> None:
    """Same queue, higher actor priority: Dramatiq's own (in-memory) priority."""
    _work(data)


@dramatiq.actor(queue_name="urgent", priority=0, max_retries=0)
def urgent_own_queue(data: dict) -> None:
    """The usual workaround: a separate queue for urgent work."""
    _work(data)
