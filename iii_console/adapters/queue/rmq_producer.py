"""Enqueue to a topic on RabbitMQ, and replay dead letters onto it.

One publish per enqueue: the body goes to the topic's exchange with the
priority as routing key and is routed to every subscribed step's queue; the
confirm covers every copy (a fan-out is whole or refused). Each step's
message id travels in ``iii_ids`` (``rmq_broker.localize``). A delayed message
is published once per copy to the delay queue of its delay.

Once-only enqueues (a cron tick's ``once``/``floor``, a state trigger's
once-key, a dedup key) cannot be one atomic step across RabbitMQ and Redis.
The message is published first, then the claim is taken in Redis by
``enqueue.lua`` (with no message to write): a publish that fails takes no
claim (the caller tries again), and a crash between the two leaves a message
whose claim the next attempt finds free. A copy published by an attempt that
then lost the claim carries the same run-key (``iii_run_key``) and the
consumer runs only the first copy it sees for that key. A once-key claimed
again after it expired (a dedup key used again after its TTL) gets a run-key
of its own: named after the value of the last claim taken on it (``…:won``,
written by the claim), which every attempt of the new claim reads alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

import redis
from dramatiq.message import Message

from iii_console.adapters.queue.errors import EnqueueError
from iii_console.adapters.queue.producer import DEDUP_TTL_MS, Subscriptions, _Builder, _script_args
from iii_console.adapters.queue.rmq_broker import RUN_KEY_TTL_MS
from iii_console.adapters.queue.rmq_topology import MAX_HOP_MS, Publisher, Topology, delay_bucket
from iii_console.adapters.queue.scripts import Scripts
from iii_console.core import replication
from iii_console.core.config import Config
from iii_console.core.dlq import DeadLetter
from iii_console.core.emitter import Emitter
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys
from iii_console.core.replay import ReplayError, build_message


def topology_of(config: Config) -> Topology:
    return Topology(config.rabbitmq.prefix, lambda topic: config.queue(topic).max_deliveries)


class RabbitProducer(_Builder):
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        config: Config,
        subscriptions: Subscriptions,
        emitter: Emitter,
        *,
        publisher: Publisher | None = None,
    ):
        super().__init__(keys, config, subscriptions, emitter)
        self.client = client
        self.scripts = Scripts(client)
        self.topology = topology_of(config)
        self.publisher = publisher or Publisher(config.rabbitmq.url)

    def _declares(self, topic: str) -> list[tuple[Any, Callable[[Any], object]]]:
        subs = self.subscriptions.get(topic, [])

        def declare(ch: Any) -> None:
            for s in subs:
                self.topology.declare_subscription(ch, topic, s.queues)

        return [(("topic", topic), declare)]

    def _publish(self, topic: str, copies: list[Any], prio: str, delay_ms: int, run_key: str | None, run_ttl_ms: int = 0) -> None:
        """Publish ``copies`` (one per subscribed step), once-only under ``run_key`` if given; a run-key is kept at
        least as long as the claim it stands for (``run_ttl_ms``, carried when longer than the consumer's default)."""
        run: dict[str, Any] = {}
        if run_key:
            run["iii_run_key"] = run_key
            if run_ttl_ms > RUN_KEY_TTL_MS:
                run["iii_run_ttl_ms"] = run_ttl_ms
        if delay_ms > 0:
            declare = [
                *self._declares(topic),
                (("delay", delay_bucket(delay_ms)), lambda ch: self.topology.declare_delay(ch, delay_ms)),
            ]
            self.topology.note_delay(delay_ms, self.client, self.keys)
            # Longer than one delay queue holds: waited out in hops, the message carrying its due time (``MAX_HOP_MS``).
            due = {"iii_due_ms": now_ms() + delay_ms} if delay_ms > MAX_HOP_MS else {}
            for sub, msg in copies:
                msg = msg.copy(options={**run, **due})
                msg.options.pop("redis_message_id", None)
                self.publisher.publish(
                    self.topology.delay(delay_ms), self.topology.queue(sub.queue(prio)), msg.encode(), declare=declare
                )
            return
        first = copies[0][1]
        options = {k: v for k, v in first.options.items() if k != "redis_message_id"}
        options["iii_ids"] = {sub.step: m.message_id for sub, m in copies}
        options.update(run)
        body = Message(
            queue_name=topic,
            actor_name="",
            args=first.args,
            kwargs={},
            options=options,
            message_id=first.message_id,
            message_timestamp=first.message_timestamp,
        ).encode()
        self.publisher.publish(self.topology.exchange(topic), prio, body, declare=self._declares(topic))

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
        """The Redis producer's contract (``producer.Producer.enqueue``) on RabbitMQ."""
        if options and options.get("group_of") is not None:
            raise EnqueueError("fan-in groups (enqueue_group) need broker: redis")
        _triples, copies, prio = self.build(
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
        run_key = once
        if (once or floor) and copies:
            # A claim already taken needs no publish (a race between the check and the claim still can publish one).
            held, last_won = self.client.mget([once, _won(once)]) if once else (None, None)
            if held is not None:
                return list(json.loads(held)) if dedup_key is not None else None
            if floor is not None and _at_or_after(self.client.get(floor[0]), floor[1]):
                return None
            if once and last_won is not None:
                # The once-key was claimed before and has expired (a dedup key used again after its TTL): the copies
                # of this claim get a run-key of their own, apart from the copy that ran for the last one.
                run_key = f"{once}:after:{hashlib.sha256(last_won).hexdigest()[:16]}"
        if once:
            extras["won"] = _won(once)  # the claim, if taken, says so there (``enqueue.lua``)
            extras["won_ttl"] = once_ttl_ms + WON_KEEP_MS
        if copies:
            self._publish(topic, copies, prio, delay_ms, run_key, once_ttl_ms if once else 0)
        if not (once or floor):
            self.emitter.put(*events)
            return ids
        # The claim, with the events: written only if it is taken.
        mark = json.dumps(ids, separators=(",", ":"))
        if once:
            extras.setdefault("v", mark)
        ns = self.keys.dramatiq_namespace
        n = self.emitter.transition(
            lambda ev: replication.current().script(
                self.client,
                self.scripts.enqueue,
                args=_script_args(ns, [], once=once, once_ttl_ms=once_ttl_ms, delay_ms=0, events=ev, floor=floor, extras=extras),
                what=f"the claim of an enqueue to {topic}",
            ),
            *events,
        )
        if isinstance(n, (bytes, str)):
            held = n.decode() if isinstance(n, bytes) else n
            if dedup_key is not None:
                return list(json.loads(held))
            return None  # the once-key was taken before
        taken = (self.client.get(once) == extras["v"].encode()) if once else (self.client.get(floor[0]) == floor[2].encode())  # type: ignore[index]
        return ids if taken else None

    def enqueue_group(self, *args: Any, **kwargs: Any) -> str:
        raise EnqueueError("fan-in groups (enqueue_group) need broker: redis")

    def depths(self, topics: list[str]) -> dict[str, int]:
        """topic -> messages ready in its subscriptions' queues (passive declares, after declaring what is missing)."""
        out: dict[str, int] = {}
        for topic in topics:
            names = [self.topology.queue(q) for s in self.subscriptions.get(topic, []) for q in s.queues]
            out[topic] = self.publisher.run(
                lambda ch: sum(ch.queue_declare(q, passive=True).method.message_count for q in names),  # noqa: B023
                declare=self._declares(topic),
            )
        return out


#: How long the record of a once-key's last claim outlives the claim: longer than a run-key (24 h), so a
#: claim taken again after its TTL never finds the record gone while the last claim's run-key is kept.
WON_KEEP_MS = 7 * 86_400_000


def _won(once: str) -> str:
    """Where ``enqueue.lua`` records the value of the last claim taken on the once-key ``once``."""
    return f"{once}:won"


def _at_or_after(last: bytes | None, ms: int) -> bool:
    """Whether a cron trigger's last fired tick (``cron-last`` JSON) is at or after ``ms``."""
    try:
        return last is not None and int(json.loads(last)["scheduled_ms"]) >= ms
    except (ValueError, KeyError, TypeError):
        return False


class AsyncRabbitProducer:
    """The same for the HTTP server and ``async def`` handlers: the confirmed publish runs in a thread."""

    def __init__(self, sync: RabbitProducer):
        self.sync = sync

    async def enqueue(self, topic: str, data: Any, **kwargs: Any) -> list[str]:
        emitter = self.sync.emitter

        def publish() -> tuple[list[str] | None, int]:
            # In a copy of the task's context: the events it puts (``message.enqueued``) are the
            # task's too, so the run's settle follows them (``Emitter.follow``).
            return self.sync.enqueue(topic, data, **kwargs), emitter.last_put

        got, seq = await asyncio.to_thread(publish)
        emitter.follow(seq)
        return got or []

    async def enqueue_group(self, *args: Any, **kwargs: Any) -> str:
        raise EnqueueError("fan-in groups (enqueue_group) need broker: redis")

    async def depths(self, topics: list[str]) -> dict[str, int]:
        """topic -> messages ready in its subscriptions' queues (for the server's ``max_queue_depth`` gate)."""
        return await asyncio.to_thread(self.sync.depths, topics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sync, name)


class RabbitReplayer:
    """``core.replay.Replayer`` on RabbitMQ: take the entry out of the store, publish it, put it back if that fails.

    Taking the entry first (one ``HDEL`` that only one caller can win) keeps two
    operators replaying at once from running it twice.
    """

    def __init__(self, client: redis.Redis, keys: Keys, emitter: Emitter, config: Config):
        self.client = client
        self.keys = keys
        self.emitter = emitter
        self.topology = topology_of(config)
        self.publisher = Publisher(config.rabbitmq.url)

    def replay(self, entry: DeadLetter) -> str:
        msg = build_message(entry)
        # A replay is a new message: it must not be taken for a second copy of a once-only one.
        for key in ("redis_message_id", "iii_run_key", "iii_ids"):
            msg["options"].pop(key, None)
        raw = self.client.hget(self.keys.dlq_entries(entry.dlq), entry.id)
        taken = replication.current().command(
            self.client, "hdel", self.keys.dlq_entries(entry.dlq), entry.id, what=f"the replay of dead letter {entry.id}"
        )
        if not taken:
            raise ReplayError(f"{entry.id}: no longer in {entry.dlq} (replayed or purged meanwhile)")
        try:
            topic = msg["options"].get("topic") or entry.topic or ""
            queue = str(entry.queue)
            declare = [(("queue", queue), lambda ch: self.topology.declare_subscription(ch, topic, [queue]))]
            self.publisher.publish(
                "", self.topology.queue(queue), json.dumps(msg, separators=(",", ":")).encode(), declare=declare
            )
        except Exception:
            if raw is not None:
                self.client.hset(self.keys.dlq_entries(entry.dlq), entry.id, raw)
            raise
        self.client.zrem(self.keys.dlq(entry.dlq), entry.id)
        self.emitter.emit(
            "message.replayed",
            trace_id=entry.trace_id,
            message_id=msg["message_id"],
            step=entry.step,
            topic=entry.topic,
            queue=entry.queue,
            data={"replay_of": entry.id, "dlq": entry.dlq, "payload": entry.data},
        )
        return str(msg["message_id"])

    def close(self) -> None:
        self.publisher.close()
