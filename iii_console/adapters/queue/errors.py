"""Errors of the queue adapter."""

from __future__ import annotations

from iii_console.core.errors import IIIError


class EnqueueError(IIIError):
    """The message could not be enqueued (bad priority, not JSON, a bad dedup key or group...)."""


class PayloadTooLarge(EnqueueError):
    """Message data over its topic's ``queues.TOPIC.max_payload_bytes``: pass large data by reference."""

    def __init__(self, topic: str, size: int, limit: int):
        self.topic, self.size, self.limit = topic, size, limit
        super().__init__(
            f"message for topic {topic!r} is {size} bytes encoded, over queues.{topic}.max_payload_bytes ({limit}): "
            "store large data with ctx.blobs.put(...) and enqueue the ref it returns"
        )
