"""Enqueue to a topic: one Dramatiq message per subscribed step, in one atomic Redis call.

Both a sync and an async flavour share the message building; the write is one
``enqueue.lua`` call either way, so a fan-out is all-or-nothing and an HTTP
request that got its 202 has its messages durably in Redis. The same call
writes each copy's ``message.enqueued`` event, so the stream shows a message
exactly when Redis holds it. A delayed message waits in Redis (its queue's
``.delayed`` set), due by Redis's clock.

One module because the sync and async producers share the message building and the
events; only the call that sends differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
from dramatiq.message import Message

from iii_console.adapters.queue.codec import encode_message
from iii_console.adapters.queue.errors import EnqueueError, PayloadTooLarge
from iii_console.adapters.queue.fanin import build_group, empty_result
from iii_console.adapters.queue.names import Subscription
from iii_console.adapters.queue.scripts import SOURCES, Scripts
from iii_console.core import ids, replication, spans
from iii_console.core.config import Config
from iii_console.core.emitter import Emitter
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys
from iii_console.core.steps import PRIORITIES

Subscriptions = dict[str, list[Subscription]]


class _Builder:
    def __init__(self, keys: Keys, config: Config, subscriptions: Subscriptions, emitter: Emitter):
        self.keys = keys
        self.config = config
        self.subscriptions = subscriptions
        self.emitter = emitter

    def dedup_claim(
        self,
        topic: str,
        dedup_key: str | None,
        dedup_ttl_ms: int,
        ids: list[str],
        trace_id: str,
        source: str | None,
        extras: dict[str, Any] | None,
    ) -> tuple[str | None, dict[str, Any]]:
        """A dedup key's once-key and the enqueue script's extras with its record (``None`` and a copy without one)."""
        extras = dict(extras or {})
        if dedup_key is None:
            return None, extras
        check_dedup(dedup_key, dedup_ttl_ms)
        extras.update(_dedup_extras(self, topic, dedup_key, ids, trace_id, source))
        return self.keys.dedup(topic, dedup_key), extras

    def build(
        self,
        topic: str,
        data: Any,
        *,
        trace_id: str,
        priority: str | None,
        delay_ms: int,
        source: str | None,
        options: dict[str, Any] | None = None,
        limit_size: bool = True,
    ) -> tuple[list[Any], list[tuple[Subscription, Message]], str]:
        subs = self.subscriptions.get(topic, [])
        strategy = self.config.queue(topic)
        prio = priority or strategy.priority
        if prio not in PRIORITIES:
            raise EnqueueError(f"priority must be one of {', '.join(PRIORITIES)}, not {prio!r}")
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or not 0 <= delay_ms <= DELAY_MAX_MS:
            raise EnqueueError(
                f"delay_ms must be a whole number of milliseconds from 0 to {DELAY_MAX_MS} (100 years), not {delay_ms!r}"
            )
        args: list[Any] = []
        copies = []
        now = now_ms()
        limit = strategy.max_payload_bytes if limit_size else None
        #: The span enqueueing it (tracing on): the message's run becomes its child.
        parent = spans.traceparent()
        for sub in subs:
            opts = {
                "trace_id": trace_id,
                "topic": topic,
                "priority": prio,
                "source": source or "",
                "enqueued_ms": now,
                "redis_message_id": ids.message_id(),
                **(options or {}),
            }
            if parent is not None:
                opts.setdefault("traceparent", parent)
            if delay_ms:
                opts["due_ms"] = now + delay_ms
            queue = sub.queue(prio)
            msg: Message[Any] = Message(
                queue_name=queue, actor_name=sub.actor(prio), args=(data,), kwargs={}, options=opts, message_id=ids.message_id()
            )
            try:
                encoded = encode_message(msg)
            except (TypeError, ValueError) as exc:
                raise EnqueueError(f"data for topic {topic!r} is not JSON-serialisable: {exc}") from None
            if limit is not None and len(encoded) > limit:
                raise PayloadTooLarge(topic, len(encoded), limit)
            args.extend([queue, opts["redis_message_id"], encoded])
            copies.append((sub, msg))
        if parent is not None:
            spans.event(
                "enqueue",
                **{
                    "iii.topic": topic,
                    "iii.priority": prio,
                    "iii.delay_ms": delay_ms,
                    "messaging.message.id": [m.message_id for _, m in copies],
                },
            )
        return args, copies, prio

    def events(
        self,
        topic: str,
        data: Any,
        copies: list[tuple[Subscription, Message]],
        prio: str,
        delay_ms: int,
        source: str | None,
        trace_id: str,
        group: str | None = None,
    ) -> list[Any]:
        """The copies' ``message.enqueued`` events, written by the enqueue script itself."""
        if not copies:
            self.emitter.emit(
                "log",
                trace_id=trace_id,
                step=source,
                topic=topic,
                data={"level": "warning", "message": f"no step subscribes to topic {topic!r}; message dropped"},
            )
        return [
            self.emitter.make(
                "message.enqueued",
                trace_id=trace_id,
                message_id=msg.message_id,
                step=sub.step,
                topic=topic,
                queue=sub.queue(prio),
                data={
                    "payload": data,
                    "priority": prio,
                    "delay_ms": delay_ms,
                    "source": source,
                    **({"group_id": group} if group else {}),
                },
            )
            for sub, msg in copies
        ]


#: How long a dedup key holds when ``dedup_ttl_ms`` is not given (24 h, as Inngest's event ids).
DEDUP_TTL_MS = 86_400_000
#: Longest dedup key accepted (it is part of a Redis key).
DEDUP_KEY_MAX = 512
#: The longest delay an enqueue may ask for.
DELAY_MAX_MS = 100 * 365 * 86_400_000
#: The longest a dedup key may be remembered (``dedup_ttl_ms``).
DEDUP_TTL_MAX_MS = 365 * 86_400_000


def _dedup_extras(builder: _Builder, topic: str, key: str, ids: list[str], trace_id: str, source: str | None) -> dict[str, Any]:
    """The enqueue script's ``X`` for a dedup key: the ids it keeps, and the event of a hit."""
    x: dict[str, Any] = {"v": json.dumps(ids, separators=(",", ":"))}
    stream = builder.emitter.stream
    if stream is not None:
        ev = builder.emitter.make(
            "message.deduplicated",
            trace_id=trace_id,
            step=source,
            topic=topic,
            data={"dedup_key": key, "message_ids": "__III_IDS__"},
        )
        x["dev"] = [ev.flat()]
        x["dst"] = json.loads(stream.payload((), [ev]))["st"]  # its counter
    return x


def _script_args(
    ns: str,
    triples: list[Any],
    *,
    once: str | None,
    once_ttl_ms: int,
    delay_ms: int,
    events: Any,
    floor: tuple[str, int, str] | None,
    extras: dict[str, Any] | None = None,
) -> list[Any]:
    f_key, f_ms, f_json = floor or ("", 0, "")
    x = json.dumps(extras, separators=(",", ":")) if extras else ""
    return [ns, once or "", once_ttl_ms, delay_ms, events, f_key, f_ms, f_json, x, *triples]


def check_dedup(dedup_key: Any, dedup_ttl_ms: Any) -> None:
    if not isinstance(dedup_key, str) or not dedup_key or len(dedup_key) > DEDUP_KEY_MAX:
        raise EnqueueError(f"dedup_key must be a non-empty string of at most {DEDUP_KEY_MAX} characters, not {dedup_key!r}")
    try:
        dedup_key.encode()
    except UnicodeEncodeError:
        raise EnqueueError(f"dedup_key must be valid Unicode text (no lone surrogates), not {dedup_key!r}") from None
    if isinstance(dedup_ttl_ms, bool) or not isinstance(dedup_ttl_ms, int) or not 1 <= dedup_ttl_ms <= DEDUP_TTL_MAX_MS:
        raise EnqueueError(
            f"dedup_ttl_ms must be a whole number of milliseconds from 1 to {DEDUP_TTL_MAX_MS} (365 days), not {dedup_ttl_ms!r}"
        )


class Producer(_Builder):
    """Synchronous producer for worker threads, the scheduler and the CLI."""

    def __init__(self, client: redis.Redis, keys: Keys, config: Config, subscriptions: Subscriptions, emitter: Emitter):
        super().__init__(keys, config, subscriptions, emitter)
        self.client = client
        self.scripts = Scripts(client)

    def enqueue(
        self,
        topic: str,
        data: Any,
        *,
        trace_id: str,
        priority: str | None = None,
        delay_ms: int = 0,
        source: str | None = None,
        once: str | None = None,
        once_ttl_ms: int = 86_400_000,
        options: dict[str, Any] | None = None,
        floor: tuple[str, int, str] | None = None,
        dedup_key: str | None = None,
        dedup_ttl_ms: int = DEDUP_TTL_MS,
        extras: dict[str, Any] | None = None,
        limit_size: bool = True,
        announce: Callable[[list[str]], list[Any]] | None = None,
    ) -> list[str] | None:
        """Returns the message ids, or ``None`` when ``once`` was already used (or ``floor`` refused it).

        ``floor`` is ``(key, ms, json)``: enqueue only if ``key`` records no
        ``scheduled_ms`` at or after ``ms``, and then set it to ``json`` (a cron
        trigger's last fired tick). With ``dedup_key``, a second enqueue to the
        topic under the same key within ``dedup_ttl_ms`` enqueues nothing and
        returns the first one's ids. ``announce(ids)`` gives more events the
        enqueue script writes with the messages' own, only if it enqueues them
        (a cron tick's ``cron.fired``).
        """
        triples, copies, prio = self.build(
            topic,
            data,
            trace_id=trace_id,
            priority=priority,
            delay_ms=delay_ms,
            source=source,
            options=options,
            limit_size=limit_size,
        )
        ids = [m.message_id for _, m in copies]
        dedup_once, extras = self.dedup_claim(topic, dedup_key, dedup_ttl_ms, ids, trace_id, source, extras)
        if dedup_once is not None:
            once, once_ttl_ms = dedup_once, dedup_ttl_ms
        events = self.events(topic, data, copies, prio, delay_ms, source, trace_id)
        if announce is not None:
            events += announce(ids)
        if copies or once or floor:
            ns = self.keys.dramatiq_namespace
            # A once-key (cron tick, state trigger, group, dedup) a failover must not lose waits for replicas
            # when configured (core/replication.py); a plain enqueue, the hot path, never does.
            wait = replication.current() if (once or floor) else replication.ReplicaWait()
            n = self.emitter.transition(
                lambda ev: wait.script(
                    self.client,
                    self.scripts.enqueue,
                    args=_script_args(
                        ns, triples, once=once, once_ttl_ms=once_ttl_ms, delay_ms=delay_ms, events=ev, floor=floor, extras=extras
                    ),
                    what=f"the once-key of an enqueue to {topic}",
                ),
                *events,
            )
            if isinstance(n, (bytes, str)):  # a dedup hit: the first enqueue's ids
                return list(json.loads(n))
            if n == 0 and (once or floor) and dedup_key is None:
                return None
        return ids

    def enqueue_group(
        self,
        topic: str,
        items: Any,
        *,
        then: str,
        trace_id: str,
        group_id: str | None = None,
        priority: str | list[str | None] | None = None,
        source: str | None = None,
    ) -> str:
        """Enqueue one child per item to ``topic`` and, once every child is settled, one message to ``then``.

        Returns the group id. A group id used before (within 24 h) enqueues nothing again.
        """
        gid, triples, events, extras = build_group(
            self, topic, items, then=then, group_id=group_id, trace_id=trace_id, priority=priority, source=source
        )
        once = self.keys.once(f"group:{gid}")
        if not triples:  # no child at all: the group is complete now
            self.enqueue(then, empty_result(gid), trace_id=trace_id, source=source, once=once, options={"group_of": gid})
            return gid
        ns = self.keys.dramatiq_namespace
        self.emitter.transition(
            lambda ev: replication.current().script(
                self.client,
                self.scripts.enqueue,
                args=_script_args(
                    ns, triples, once=once, once_ttl_ms=86_400_000, delay_ms=0, events=ev, floor=None, extras=extras
                ),
                what=f"the once-key of fan-in group {gid}",
            ),
            *events,
        )
        return gid


class AsyncProducer(_Builder):
    """The same for the HTTP server and ``async def`` handlers."""

    def __init__(
        self,
        client: aredis.Redis,
        keys: Keys,
        config: Config,
        subscriptions: Subscriptions,
        emitter: Emitter,
        *,
        autopipe: Any = None,
    ):
        super().__init__(keys, config, subscriptions, emitter)
        self.client = client
        #: A once-key that waits for replicas goes on its own pipeline (the WAIT must follow it on its connection):
        #: redis-py's async script, which loads itself again when Redis lost it (a restart, a SCRIPT FLUSH),
        #: called directly or queued on a pipeline.
        self._enqueue_waited = client.register_script(SOURCES["enqueue"])
        #: With an AutoPipeline, concurrent enqueues share round trips.
        self._enqueue = autopipe.script(SOURCES["enqueue"]) if autopipe is not None else self._enqueue_waited

    async def _once(self, args: list[Any], what: str) -> Any:
        """The enqueue script under a once-key: followed by ``WAIT`` when ``redis.wait_replicas`` asks for it."""
        wait = replication.current()
        if not wait.on:
            return await self._enqueue(args=args)
        return await wait.ascript(self.client, self._enqueue_waited, args=args, what=what)

    def prepare(
        self,
        topic: str,
        data: Any,
        *,
        trace_id: str,
        priority: str | None = None,
        delay_ms: int = 0,
        source: str | None = None,
        options: dict[str, Any] | None = None,
        dedup_key: str | None = None,
        dedup_ttl_ms: int = DEDUP_TTL_MS,
        extras: dict[str, Any] | None = None,
    ) -> Prepared:
        """An enqueue's ``enqueue.lua`` arguments, built but not sent (a unit of work sends them later)."""
        triples, copies, prio = self.build(
            topic, data, trace_id=trace_id, priority=priority, delay_ms=delay_ms, source=source, options=options
        )
        ids = [m.message_id for _, m in copies]
        once, extras = self.dedup_claim(topic, dedup_key, dedup_ttl_ms, ids, trace_id, source, extras)
        events = self.events(topic, data, copies, prio, delay_ms, source, trace_id)
        if not (copies or once):
            return Prepared(None, ids, None)
        return Prepared(self._args(triples, events, once, dedup_ttl_ms, delay_ms, extras), ids, once)

    async def enqueue(self, topic: str, data: Any, **kw: Any) -> list[str]:
        """Enqueue now (see :meth:`prepare` for the arguments); the message ids, or a dedup hit's first ids."""
        prep = self.prepare(topic, data, **kw)
        if prep.args is None:
            return prep.ids
        # On a loop the script does not wait for the event buffer (see docs/guarantees.md): outside a
        # unit of work (which writes its request's held-back events first), events this task put
        # before it may land after its ``message.enqueued``.
        n = await (
            self._once(prep.args, f"the dedup key of an enqueue to {topic}") if prep.once else self._enqueue(args=prep.args)
        )
        if isinstance(n, (bytes, str)):
            return list(json.loads(n))
        return prep.ids

    def prepare_group(
        self,
        topic: str,
        items: Any,
        *,
        then: str,
        trace_id: str,
        group_id: str | None = None,
        priority: str | list[str | None] | None = None,
        source: str | None = None,
    ) -> tuple[str, list[Any]]:
        """A fan-in group's id and its ``enqueue.lua`` arguments, built but not sent."""
        gid, triples, events, extras = build_group(
            self, topic, items, then=then, group_id=group_id, trace_id=trace_id, priority=priority, source=source
        )
        once = self.keys.once(f"group:{gid}")
        if not triples:
            triples, copies, prio = self.build(
                then, empty_result(gid), trace_id=trace_id, priority=None, delay_ms=0, source=source, options={"group_of": gid}
            )
            events, extras = self.events(then, empty_result(gid), copies, prio, 0, source, trace_id), {}
        return gid, self._args(triples, events, once, 86_400_000, 0, extras)

    def _args(
        self, triples: Any, events: Any, once: str | None, once_ttl_ms: int, delay_ms: int, extras: dict[str, Any]
    ) -> list[Any]:
        """``enqueue.lua``'s arguments, with the events encoded for the stream."""
        stream = self.emitter.stream
        ev = stream.payload((), events) if stream is not None else ""
        return _script_args(
            self.keys.dramatiq_namespace,
            triples,
            once=once,
            once_ttl_ms=once_ttl_ms,
            delay_ms=delay_ms,
            events=ev,
            floor=None,
            extras=extras,
        )

    async def enqueue_group(self, topic: str, items: Any, **kw: Any) -> str:
        gid, args = self.prepare_group(topic, items, **kw)
        await self._once(args, f"the once-key of fan-in group {gid}")
        return gid


@dataclass(frozen=True)
class Prepared:
    """An enqueue built but not sent: the script's arguments (``None``: nothing to send), the ids, its dedup key."""

    args: list[Any] | None
    ids: list[str]
    once: str | None


def subscriptions_for(steps: Any) -> Subscriptions:
    """topic -> subscriptions, including the pseudo-topics of cron and state steps."""
    from iii_console.adapters.queue.names import CRON_TOPIC, STATE_TOPIC
    from iii_console.core.steps import CronTrigger, StateTrigger

    subs: Subscriptions = {}
    for step in steps:
        for topic in step.topics:
            subs.setdefault(topic, []).append(Subscription(topic, step.name))
        if step.of(CronTrigger):
            subs.setdefault(f"{CRON_TOPIC}.{step.name}", []).append(Subscription(CRON_TOPIC, step.name))
        if step.of(StateTrigger):
            subs.setdefault(f"{STATE_TOPIC}.{step.name}", []).append(Subscription(STATE_TOPIC, step.name))
    return subs
