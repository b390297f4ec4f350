"""The ``data`` of each event type, as typed dicts.

An event's scalar fields (``trace_id``, ``step``, ``attempt``...) are the same for
every type (:class:`~iii_console.core.events.Event`); what differs is ``data``.
These shapes are what the console, ``tail``, the metrics and users' scripts read,
so the code that builds an event builds its ``data`` through one of them and a
type checker holds both sides to the same fields. Events written by Lua scripts
(``message.redelivered``, ``state.changed``, ``group.completed``) have their
shape here too, for readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict

#: Every event type the runtime emits, in the order of a message's life. A step's
#: ``ctx.emit`` may add domain types of its own (``notification.sent``).
EventType = Literal[
    "http.received",
    "message.enqueued",
    "message.started",
    "message.processed",
    "message.failed",
    "message.retrying",
    "message.dead_lettered",
    "message.replayed",
    "message.redelivered",
    "message.deduplicated",
    "message.throttled",
    "group.completed",
    "state.changed",
    "notification.sent",
    "progress",
    "cron.fired",
    "cron.skipped",
    "worker.started",
    "worker.heartbeat",
    "worker.stopped",
    "redis.down",
    "redis.restarted",
    "log",
    "step.error",
    "config.reloaded",
]


class MessageEnqueued(TypedDict):
    payload: Any
    priority: str
    delay_ms: int
    source: str | None
    group_id: NotRequired[str]


class MessageFailed(TypedDict, total=False):
    traceback: str
    #: The handler ignored its hard time limit; its process is recycled.
    stuck: bool


class MessageRetrying(TypedDict):
    delay_ms: int
    #: The handler raised ``Retry`` (its own time) rather than failing.
    retry_after: NotRequired[bool]
    #: With ``retry_after``: whether the wait spends an attempt.
    counts: NotRequired[bool]
    #: The handler failed because the deployment's Redis was unreachable: no attempt spent.
    store_unreachable: NotRequired[bool]
    #: The handler failed because the deployment's Redis refused its writes (full, read-only, busy): no attempt spent.
    store_refuses_writes: NotRequired[bool]


class MessageDeadLettered(TypedDict):
    """One shape whatever the reason: retries exhausted, invalid input, poison, undecodable."""

    dlq: str
    #: Runs it had (0 for an undecodable body, which never ran).
    attempts: int
    #: The entry's id when it is not the event's ``message_id`` (an undecodable body has none).
    entry: NotRequired[str]
    #: Set when it was dead-lettered unrun for its delivery count (``max_deliveries``).
    deliveries: NotRequired[int]


class MessageReplayed(TypedDict):
    replay_of: str
    dlq: str
    payload: Any


class MessageRedelivered(TypedDict):
    """Written by ``iii_redelivered`` in ``core/lua/_events.lua``."""

    reason: str
    deliveries: int
    by: str
    worker_id: str


class MessageDeduplicated(TypedDict):
    dedup_key: str
    message_ids: Any


class MessageThrottled(TypedDict):
    key: str
    reason: str
    wait_ms: int
    limit: int | None
    period_ms: int | None
    concurrency_per_key: int | None


class StateChanged(TypedDict):
    """Written by ``core/lua/state_cas.lua`` with the change."""

    group: str
    key: str
    op: str
    old: Any
    new: Any


class CronFired(TypedDict):
    expression: str
    scheduled_ms: int
    fired_ms: int
    drift_ms: int
    manual: NotRequired[bool]


class CronSkipped(TypedDict):
    expression: str
    scheduled_ms: int
    last_scheduled_ms: int
    count: int
    now_ms: int
    last_fired_ms: int | None
    reason: str


class WorkerStopped(TypedDict, total=False):
    id: str
    name: str
    reason: str
    requeued: int
    abandoned: int


class Log(TypedDict):
    level: str
    message: str


class StepError(TypedDict, total=False):
    #: The handler's own frames, for a handler that raised (HTTP steps).
    traceback: str
    file: str | None
    line: int | None
    field: str | None
    message: str


class ConfigReloaded(TypedDict):
    ok: bool
    changed: list[str]
    steps: NotRequired[list[str]]
    errors: NotRequired[list[str]]


#: The ``data`` shape of each type that has a fixed one (the others carry free-form data:
#: a worker's description, a progress value, a domain event's fields).
EVENT_DATA: Mapping[str, type] = {
    "message.enqueued": MessageEnqueued,
    "message.failed": MessageFailed,
    "message.retrying": MessageRetrying,
    "message.dead_lettered": MessageDeadLettered,
    "message.replayed": MessageReplayed,
    "message.redelivered": MessageRedelivered,
    "message.deduplicated": MessageDeduplicated,
    "message.throttled": MessageThrottled,
    "state.changed": StateChanged,
    "cron.fired": CronFired,
    "cron.skipped": CronSkipped,
    "worker.stopped": WorkerStopped,
    "log": Log,
    "step.error": StepError,
    "config.reloaded": ConfigReloaded,
}
