"""A bare Dramatiq actor on the stock RabbitmqBroker, as its users write it (run with the ``dramatiq`` CLI).

The broker's defaults: classic durable queues, no publisher confirms, prefetch
of twice the threads. The URL is the run's private node (``BENCH_RABBITMQ_URL``).
With ``BENCH_RABBITMQ_QUORUM=1`` (a one-off, not a scenario's contender) its queues are
quorum queues instead, to tell how much of a gap the queue type explains.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.work import work as _work


class QuorumRabbitmqBroker(RabbitmqBroker):
    """The stock broker with its work and delay queues declared as quorum queues."""

    def _build_queue_arguments(self, queue_name: str) -> dict:
        return {**super()._build_queue_arguments(queue_name), "x-queue-type": "quorum"}


broker_class = QuorumRabbitmqBroker if os.environ.get("BENCH_RABBITMQ_QUORUM") == "1" else RabbitmqBroker
broker = broker_class(url=os.environ["BENCH_RABBITMQ_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="work", max_retries=0)
def work(data: dict) -> None:
    _work(data)
