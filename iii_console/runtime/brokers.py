"""The one place the queue broker is chosen (``broker: redis | rabbitmq``).

Workers, producers and dead-letter replay ask here, so the rest of the
runtime does not know which broker holds the messages.
"""

from __future__ import annotations

from typing import Any

from iii_console.core.config import Config


def make_broker(config: Config, services: Any, subscriptions: Any, middleware: list[Any]) -> Any:
    """The worker's Dramatiq broker."""
    max_deliveries = lambda topic: config.queue(topic).max_deliveries  # noqa: E731
    dead_letter_queue = lambda topic: config.queue(topic).dead_letter_queue  # noqa: E731
    if config.broker == "rabbitmq":
        from iii_console.adapters.queue.rmq_broker import RabbitBroker

        exchange_topics = {q: topic for topic, subs in subscriptions.items() for s in subs for q in s.queues}
        return RabbitBroker(
            url=config.rabbitmq.url,
            prefix=config.rabbitmq.prefix,
            client=services.client,
            keys=services.keys,
            exchange_topics=exchange_topics,
            emitter=services.emitter,
            middleware=middleware,
            max_deliveries=max_deliveries,
            dead_letter_queue=dead_letter_queue,
        )
    from iii_console.adapters.queue.broker import IIIBroker

    return IIIBroker(
        client=services.client,
        keys=services.keys,
        emitter=services.emitter,
        middleware=middleware,
        max_deliveries=max_deliveries,
        dead_letter_queue=dead_letter_queue,
    )


def make_producer(services: Any, subscriptions: Any) -> Any:
    """The sync producer (``ctx.enqueue`` in ``def`` handlers, the scheduler, state triggers)."""
    if services.config.broker == "rabbitmq":
        from iii_console.adapters.queue.rmq_producer import RabbitProducer

        return RabbitProducer(services.client, services.keys, services.config, subscriptions, services.emitter)
    from iii_console.adapters.queue.producer import Producer

    return Producer(services.client, services.keys, services.config, subscriptions, services.emitter)


def make_async_producer(services: Any, subscriptions: Any, client: Any, autopipe: Any) -> Any:
    """The async producer (the HTTP server, ``async def`` handlers)."""
    if services.config.broker == "rabbitmq":
        from iii_console.adapters.queue.rmq_producer import AsyncRabbitProducer, RabbitProducer

        return AsyncRabbitProducer(
            RabbitProducer(services.client, services.keys, services.config, subscriptions, services.emitter)
        )
    from iii_console.adapters.queue.producer import AsyncProducer

    return AsyncProducer(client, services.keys, services.config, subscriptions, services.emitter, autopipe=autopipe)


def make_replayer(services: Any) -> Any:
    """``iii-console dlq replay``'s replayer: back onto the broker the messages live on."""
    if services.config.broker == "rabbitmq":
        from iii_console.adapters.queue.rmq_producer import RabbitReplayer

        return RabbitReplayer(services.client, services.keys, services.emitter, services.config)
    from iii_console.core.replay import Replayer

    return Replayer(services.client, services.keys, services.emitter)


def fire_cron_now(
    client: Any,
    keys: Any,
    emitter: Any,
    config: Config,
    step: str,
    expression: str,
    *,
    priority: str = "normal",
    source: str = "cli",
) -> tuple[str, str]:
    """A manual tick of ``step``'s cron trigger on the configured broker (``core.cronrun.run_now`` for Redis).

    Returns ``(trace id, message id)``. On RabbitMQ the tick is published, then
    its ``message.enqueued`` and ``cron.fired`` events are written.
    """
    if config.broker != "rabbitmq":
        from iii_console.core.cronrun import run_now

        return run_now(client, keys, emitter, step, expression, priority=priority, source=source)
    import uuid

    from iii_console.adapters.queue.names import CRON_TOPIC, Subscription
    from iii_console.adapters.queue.rmq_producer import RabbitProducer
    from iii_console.core.events import now_ms

    topic, now, trace_id = f"{CRON_TOPIC}.{step}", now_ms(), uuid.uuid4().hex
    data = {"scheduled_ms": now, "fired_ms": now, "expression": expression, "manual": True}

    def fired(ids: list[str]) -> list[Any]:
        return [
            emitter.make(
                "cron.fired",
                trace_id=trace_id,
                message_id=ids[0] if ids else None,
                step=step,
                topic=topic,
                data={"expression": expression, "scheduled_ms": now, "fired_ms": now, "drift_ms": 0, "manual": True},
            )
        ]

    producer = RabbitProducer(client, keys, config, {topic: [Subscription(CRON_TOPIC, step)]}, emitter)
    try:
        ids = producer.enqueue(topic, data, trace_id=trace_id, priority=priority, source=source, announce=fired) or []
    finally:
        producer.publisher.close()
    return trace_id, (ids[0] if ids else "")


class ConsoleBroker:
    """What the console does on a broker other than Redis: replay dead letters and run a cron step now.

    The console reads and writes Redis through the core only; the command line that
    starts it hands this in (``console_broker``) when the queue messages live elsewhere.
    """

    def __init__(self, config: Config):
        self.config = config

    def replayer(self, client: Any, keys: Any, emitter: Any) -> Any:
        """A replayer with ``replay(entry)`` and ``close()``."""
        from iii_console.adapters.queue.rmq_producer import RabbitReplayer

        return RabbitReplayer(client, keys, emitter, self.config)

    def run_cron(
        self, client: Any, keys: Any, emitter: Any, step: str, expression: str, *, priority: str, source: str
    ) -> tuple[str, str]:
        return fire_cron_now(client, keys, emitter, self.config, step, expression, priority=priority, source=source)


def console_broker(config: Config) -> ConsoleBroker | None:
    """The console's broker operations, or ``None`` when the messages live in Redis (the console's own path)."""
    return ConsoleBroker(config) if config.broker == "rabbitmq" else None
