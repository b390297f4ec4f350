"""A bare Dramatiq actor on the stock RabbitmqBroker, as its users write it (run with the ``dramatiq`` CLI).

The broker's defaults: classic durable queues, no publisher confirms, prefetch
of twice the threads. The URL is the run's private node (``BENCH_RABBITMQ_URL``).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.work import work as _work

broker = RabbitmqBroker(url=os.environ["BENCH_RABBITMQ_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="work", max_retries=0)
def work(data: dict) -> None:
    _work(data)
