"""Dramatiq's RabbitMQ broker with our consumer semantics, on quorum queues.

A subclass of :class:`dramatiq.brokers.rabbitmq.RabbitmqBroker` for its
connection handling and Dramatiq's broker protocol; what the stock broker does
with queues, delays and dead letters is replaced:

- **Quorum queues** per subscription and priority behind a per-topic exchange
  (``rmq_topology.py``), declared with ``x-delivery-limit`` so a message that
  keeps killing its worker is dead-lettered unrun after ``max_deliveries``
  (stock: classic queues, redelivered forever).
- **Delays wait in RabbitMQ**: a retry or a ``delay_ms`` message is published
  with a confirm to the shared delay queue of its delay (TTL, then the default
  exchange routes it back to its queue) and only then is the original acked
  (stock: a ``.DQ`` queue whose messages are held in worker memory until due).
  A worker killed during a backoff loses nothing: nothing of it is in memory.
- **Dead letters reach our store**: a handler that ran out of retries has its
  entry (error, traceback, attempts, trace id) written to Redis before its ack;
  messages RabbitMQ dead-letters itself (the delivery limit, an undecodable body
  rejected by the consumer) go through ``P.dead`` into the ingester, which
  writes the entry (with the raw bytes of an undecodable body) and its
  ``message.dead_lettered`` event, then acks.
- **Strict priority, emulated**: quorum queues have no priorities, so each
  priority has its own queue, and a subscription's normal (low) consumer holds
  a delivered message back while its high (or high and normal) queue has ready
  messages, looking again every 50 ms. The answer to "do the higher queues have
  ready messages?" (a passive ``queue.declare`` per higher queue, one round trip
  each) is reused for ``PRIORITY_CHECK_S`` (5 ms), not asked per message: a
  lower message may start up to 5 ms after a higher one became ready (besides
  the one per priority already handed to the worker). Asked per message, the
  round trips cost ~40 % of a drain's rate.
- **Lifecycle events** go to the Redis event stream as with the Redis broker,
  through the process's event buffer (there is no script to ride on).

One module because the broker, its consumer and the dead-letter ingester share the
connection rules and the settle semantics listed above.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from iii_console.adapters.queue.broker import Delivery, IIIConsumer, _higher_queues
from iii_console.adapters.queue.codec import decode_message
from iii_console.adapters.queue.deadletters import (
    DeadDecision,
    attempts_of,
    dead,
    dead_lettered,
    describe,
    entry_for,
    undecodable_entry,
)
from iii_console.adapters.queue.middleware import HookCache
from iii_console.adapters.queue.names import Subscription, parse_queue
from iii_console.adapters.queue.rmq_topology import AMQP_ERRORS, MAX_HOP_MS, Publisher, Topology, delay_bucket, parameters
from iii_console.adapters.queue.scripts import Scripts
from iii_console.adapters.queue.storefault import StoreGate
from iii_console.core import replication
from iii_console.core.dlq import DeadLetter
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys

log = logging.getLogger(__name__)

#: How often a consumer held back by a higher-priority backlog looks again (the bound on a
#: lower message's wait once the higher queues are empty).
YIELD_POLL_S = 0.05
#: While the store gate is shut, how long a consumer waits on its connection between looks at it.
STORE_HOLD_POLL_S = 0.1
#: How long a consumer reuses its last "the higher queues are empty" answer (the strictness bound:
#: a lower message may start up to this long after a higher one became ready).
PRIORITY_CHECK_S = 0.005
#: How long after its start a consumer retries a consume refused because its new queue was still starting.
CONSUME_START_S = 10.0
#: The pause before the first such retry (doubled for each next one, up to 1 s).
CONSUME_RETRY_S = 0.05
#: How long a run-key (one run per cron tick, state change or dedup key) is kept.
RUN_KEY_TTL_MS = 86_400_000


def localize(message: Message, queue_name: str) -> Message:
    """The copy of a (possibly fanned-out) message that belongs to ``queue_name``.

    A topic publish is one body routed to every subscribed step's queue; it
    carries each step's message id in ``iii_ids``. The queue it was read from
    says which step, and so which actor and id, it is.
    """
    options = dict(message.options)
    ids = options.pop("iii_ids", None)
    topic, step, priority = parse_queue(queue_name)
    mid = ids.get(step) if isinstance(ids, dict) else None
    return Message(
        queue_name=queue_name,
        actor_name=Subscription(topic, step).actor(priority),
        args=message.args,
        kwargs=message.kwargs,
        options=options,
        message_id=mid or message.message_id,
        message_timestamp=message.message_timestamp,
    )


class RabbitBroker(HookCache, RabbitmqBroker):
    def __init__(
        self,
        *,
        url: str,
        prefix: str,
        client: redis.Redis,
        keys: Keys,
        exchange_topics: dict[str, str],
        emitter: Any = None,
        middleware: list[Any] | None = None,
        max_deliveries: Callable[[str], int] | None = None,
        dead_letter_queue: Callable[[str], str] | None = None,
    ):
        super().__init__(url=url, middleware=middleware, confirm_delivery=True)
        self.parameters = parameters(url)
        self.client = client
        self.keys = keys
        self.emitter = emitter
        self.broker_id = str(uuid.uuid4())
        self.max_deliveries = max_deliveries or (lambda _topic: 10)
        self.dead_letter_queue = dead_letter_queue or (lambda _topic: "dead-letters")
        self.topology = Topology(prefix, self.max_deliveries)
        #: queue name -> the topic its exchange is named after (the topic enqueues go to).
        self.exchange_topics = exchange_topics
        self.publisher = Publisher(url)
        #: The Redis scripts the worker's heartbeat, sweep and throttle use.
        self.iii_scripts = Scripts(client)
        #: Shut while the deployment's Redis fails handlers (``storefault``): deliveries wait in RabbitMQ meanwhile.
        self.store_gate = StoreGate(client, keys)
        self._ingester: threading.Thread | None = None
        self._stop = threading.Event()

    # -- Dramatiq's broker protocol ------------------------------------------
    @property
    def consumer_class(self) -> type:
        return RabbitConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        self.declare_queue(queue_name)
        self.publisher.run(lambda _ch: None, declare=[self.declaration(queue_name)])
        self.start_ingester()
        return RabbitConsumer(self, queue_name, prefetch, timeout)

    def declare_queue(self, queue_name: str, *, ensure: bool = False) -> None:
        """Record the queue; it is declared on RabbitMQ (with its exchange) before first use."""
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def declaration(self, queue_name: str) -> tuple[Any, Callable[[Any], None]]:
        """Declare ``queue_name`` with its subscription's other priorities (a consumer looks at those too)."""
        sub_topic, step, _ = parse_queue(queue_name)
        topic = self.exchange_topics.get(queue_name) or sub_topic
        queues = Subscription(sub_topic, step).queues
        return ("queues", tuple(queues)), lambda ch: self.topology.declare_subscription(ch, topic, queues)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Publish one message to its queue (for Dramatiq's own ``actor.send``); the runtime uses ``rmq_producer``."""
        self.emit_before("enqueue", message, delay)
        self.publish_to_queue(message.queue_name, message.encode(), int(delay or 0))
        self.emit_after("enqueue", message, delay)
        return message

    def publish_to_queue(self, queue_name: str, body: bytes, delay_ms: int = 0) -> None:
        """Publish ``body`` to one queue, through the delay queue of ``delay_ms`` if above 0; confirmed.

        A delay longer than one delay queue holds (``MAX_HOP_MS``) goes with its due time in the message
        (``iii_due_ms``), and the consumer sends it on for the rest when the first hop ends."""
        target = self.topology.queue(queue_name)
        declare = [self.declaration(queue_name)]
        if delay_ms > MAX_HOP_MS:
            message = Message.decode(body)
            body = message.copy(options={"iii_due_ms": now_ms() + delay_ms}).encode()
        if delay_ms > 0:
            declare.append((("delay", delay_bucket(delay_ms)), lambda ch: self.topology.declare_delay(ch, delay_ms)))
            self.topology.note_delay(delay_ms, self.client, self.keys)
            self.publisher.publish(self.topology.delay(delay_ms), target, body, declare=declare)
        else:
            self.publisher.publish("", target, body, declare=declare)

    def close(self) -> None:
        self._stop.set()
        if self._ingester is not None:
            self._ingester.join(3)
        self.publisher.close()
        super().close()

    # -- what the runtime expects of our brokers -----------------------------
    def group_args(self, message: Any) -> list[str]:
        return ["", message.message_id or ""]

    def dead_event(self, entry: DeadLetter, *, deliveries: int | None = None) -> Any:
        """The entry's ``message.dead_lettered`` event (one shape, as on the Redis broker), or None with no emitter."""
        return dead_lettered(self.emitter, entry, deliveries=deliveries) if self.emitter is not None else None

    def store_dead_letter(self, entry: DeadLetter, event: Any = None) -> None:
        """Write a dead-letter entry (idempotent: the same id overwrites itself), then its event."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.dlq_entries(entry.dlq), entry.id, entry.encode())
        pipe.zadd(self.keys.dlq(entry.dlq), {entry.id: entry.last_failure_ms})
        pipe.sadd(self.keys.dlq_names, entry.dlq)
        pipe.execute()
        if self.emitter is not None:
            self.emitter.put(event)

    def claim_run(self, run_key: str, step: str, message_id: str, ttl_ms: int = RUN_KEY_TTL_MS) -> bool:
        """Whether this message is the one copy that runs for ``run_key`` (its redeliveries run again); the
        run-key is kept ``ttl_ms`` (at least a day: as long as the claim it stands for, a long dedup TTL)."""
        key = f"{run_key}:run:{step}"
        px = max(RUN_KEY_TTL_MS, ttl_ms)
        if replication.current().command(
            self.client, "set", key, message_id, nx=True, px=px, what=f"the run-key of once-only message {run_key}"
        ):
            return True
        held = self.client.get(key)
        return held is None or held.decode() == message_id

    # -- the dead-letter ingester ---------------------------------------------
    def start_ingester(self) -> None:
        if self._ingester is None or not self._ingester.is_alive():
            self._stop.clear()
            self._ingester = threading.Thread(target=self._ingest_forever, name="iii-rmq-dead", daemon=True)
            self._ingester.start()

    def _ingest_forever(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = pika.BlockingConnection(self.parameters)
                ch = conn.channel()
                self.topology.declare_dead(ch)
                ch.basic_qos(prefetch_count=20)
                for method, props, body in ch.consume(self.topology.dead, inactivity_timeout=0.5):
                    if self._stop.is_set():
                        break
                    if method is None:
                        continue
                    self.ingest(props, body)
                    ch.basic_ack(method.delivery_tag)
            except (*AMQP_ERRORS, redis.RedisError) as exc:
                log.warning("dead-letter ingester: %s; reconnecting", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("dead-letter ingester crashed; restarting it")
                self._stop.wait(1.0)
            finally:
                try:
                    if conn is not None and conn.is_open:
                        conn.close()
                except Exception:
                    pass

    def ingest(self, props: Any, body: bytes) -> None:
        """Write the dead-letter entry of a message RabbitMQ dead-lettered into ``P.dead``."""
        death = ((props.headers or {}).get("x-death") or [{}])[0]
        reason = _text(death.get("reason")) or "rejected"
        rq = _text(death.get("queue")) or ""
        queue_name = self.topology.local(rq)
        try:
            message = localize(decode_message(body), queue_name)
        except Exception as exc:
            rid = f"{hashlib.sha256(body).hexdigest()[:16]}-{uuid.uuid4().hex[:8]}"
            entry = undecodable_entry(queue_name, rid, body, exc)
            log.error("quarantined undecodable message on %s: %s", queue_name, exc)
            self.store_dead_letter(entry, self.dead_event(entry))
            return
        topic_cfg = message.options.get("topic", "") or ""
        deliveries: int | None = None
        if reason == "delivery_limit":
            deliveries = self.max_deliveries(topic_cfg)
            error = (
                f"delivered {deliveries} times without finishing: it crashed or hung its worker each time "
                f"(queues.<topic>.max_deliveries = {deliveries})"
            )
        else:
            error = f"dead-lettered by RabbitMQ ({reason})"
        decision = dead(
            self.dead_letter_queue(topic_cfg), error, attempts=attempts_of(message), fanin="dead", deliveries=deliveries
        )
        entry = entry_for(message, decision)
        log.error("dead-lettering %s on %s: %s", message.message_id, queue_name, error)
        self.store_dead_letter(entry, self.dead_event(entry, deliveries=deliveries))


def _whole(v: Any, default: int) -> int:
    """A message option that must be a whole number (not a bool), else ``default``."""
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _text(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


class RabbitConsumer(Consumer):
    def __init__(self, broker: RabbitBroker, queue_name: str, prefetch: int, timeout: int):
        self.broker = broker
        self.queue_name = queue_name
        self.rabbit_queue = broker.topology.queue(queue_name)
        #: The same subscription's higher-priority queues: a message of this one waits while they have ready ones.
        self.higher = [broker.topology.queue(q) for q in _higher_queues(queue_name)]
        #: Delivered to us but held back for a higher-priority backlog (unacked: a crash returns them).
        self.held: list[tuple[Any, bytes]] = []
        self.tags: set[int] = set()
        #: Until when (monotonic) the last "higher queues empty" answer holds (``PRIORITY_CHECK_S``).
        self.higher_empty_until = 0.0
        #: Delivery tags handed out by the iterator and not yet acked or rejected (consumer thread only).
        self.unsettled: set[int] = set()
        #: Tags the worker threads settled, waiting for the consumer thread to ack them in one go.
        self.to_ack: list[int] = []
        self.ack_lock = threading.Lock()
        self.ack_scheduled = False
        self.prefetch = prefetch
        # Idle, it returns to Dramatiq's loop every worker timeout (so a stop is noticed within it).
        self.inactivity_timeout = max(0.05, timeout / 1000)
        #: Whether RabbitMQ took the consume (pika sends it on the first read); until then, and for
        #: ``CONSUME_START_S``, a refusal of a queue whose replica is still starting is retried here.
        self.consuming = False
        self.start_by = time.monotonic() + CONSUME_START_S
        self.refusals = 0
        try:
            self._open()
        except AMQP_ERRORS as e:
            raise ConnectionClosed(e) from None

    def _open(self) -> None:
        self.connection = pika.BlockingConnection(self.broker.parameters)
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_count=self.prefetch)
        self.iterator = self.channel.consume(self.rabbit_queue, inactivity_timeout=self.inactivity_timeout)

    def _reopen_after(self, exc: Exception) -> bool:
        """Whether ``exc`` was a consume refused while the queue was starting (then a new connection consumes).

        RabbitMQ 3.10 answers a consume that reaches a new quorum queue before its
        replica process is up (another connection declared it a moment before) by
        closing the connection with 541 INTERNAL_ERROR. Without this, the consumer
        would wait out Dramatiq's restart delay (3 s) with a CRITICAL log line.
        """
        code = getattr(exc, "reply_code", None)
        if self.consuming or code != 541 or time.monotonic() > self.start_by:
            return False
        self.refusals += 1
        (log.info if self.refusals == 1 else log.debug)(
            "the consume of %s was refused while its queue was starting (%s); consuming again", self.queue_name, exc
        )
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception:
            pass
        time.sleep(min(CONSUME_RETRY_S * 2 ** (self.refusals - 1), 1.0))
        try:
            self._open()
        except AMQP_ERRORS:
            return False
        return True

    # -- fetching -----------------------------------------------------------
    def __next__(self) -> MessageProxy | None:
        try:
            if not self.channel.is_open:
                # RabbitMQ closed the channel (its consumer_timeout passed during a long hold, a channel
                # error) and took back every unacked delivery, the held ones too: they are its again, not
                # ours. pika's waits do not raise for a closed channel, so this is where it is noticed.
                self._drop_held()
                raise ConnectionClosed(pika.exceptions.ChannelClosed(0, "the consumer's channel is closed"))
            if not self.broker.store_gate.open():
                # Redis fails handlers now: what RabbitMQ delivers waits, unacked, until it is back
                # (the connection's heartbeats still answered) instead of each running up to its first write.
                self.connection.process_data_events(time_limit=STORE_HOLD_POLL_S)
                return None
            if self.held:
                if self._higher_waiting():
                    self.connection.process_data_events(time_limit=YIELD_POLL_S)
                    return None
                method, body = self.held.pop(0)
                return self._deliver(method, body)
            method, _props, body = next(self.iterator)
            self.consuming = True
            if method is None:
                return None
            self.unsettled.add(method.delivery_tag)
            # The gate may have shut while this read waited (a handler failed for Redis, and its settle
            # freed the prefetch slot this delivery took): it waits with the held ones.
            if not self.broker.store_gate.open() or (self.higher and self._higher_waiting()):
                self.held.append((method, body))
                return None
            return self._deliver(method, body)
        except (AssertionError, *AMQP_ERRORS) as e:
            if self._reopen_after(e):
                return None
            raise ConnectionClosed(e) from None

    def _higher_waiting(self) -> bool:
        """Whether a higher queue has ready messages; an "empty" answer is reused for ``PRIORITY_CHECK_S``."""
        now = time.monotonic()
        if now < self.higher_empty_until:
            return False
        waiting = any(self.channel.queue_declare(q, passive=True).method.message_count > 0 for q in self.higher)
        if not waiting:
            self.higher_empty_until = time.monotonic() + PRIORITY_CHECK_S
        return waiting

    def _deliver(self, method: Any, body: bytes) -> MessageProxy | None:
        tag = method.delivery_tag
        try:
            message = localize(decode_message(body), self.queue_name)
        except Exception as exc:  # DecodeError and anything a hostile payload triggers
            # Rejected without requeue: RabbitMQ dead-letters it, raw bytes and all, to the ingester.
            log.error("rejecting undecodable message on %s: %s", self.queue_name, exc)
            self.unsettled.discard(tag)
            self.channel.basic_reject(tag, requeue=False)
            return None
        left = _whole(message.options.get("iii_due_ms"), 0) - now_ms()
        if left > 0:
            # A long delay's hop ended (``MAX_HOP_MS``): on for the rest, confirmed before this delivery is acked
            # (a crash in between leaves two copies waiting, never none).
            try:
                self.broker.publish_to_queue(self.queue_name, body, left)
            except redis.RedisError as exc:
                raise ConnectionClosed(exc) from None
            self.unsettled.discard(tag)
            self.channel.basic_ack(tag)
            return None
        run_key = message.options.get("iii_run_key")
        if isinstance(run_key, str) and run_key:
            _topic, step, _ = parse_queue(self.queue_name)
            try:
                ttl = _whole(message.options.get("iii_run_ttl_ms"), RUN_KEY_TTL_MS)
                ours = self.broker.claim_run(run_key, step, message.message_id, ttl)
            except redis.RedisError as exc:
                raise ConnectionClosed(exc) from None
            if not ours:
                # A second copy of a once-only message (its producer published, then lost the claim): run once.
                self.unsettled.discard(tag)
                self.channel.basic_ack(tag)
                if self.broker.emitter is not None:
                    self.broker.emitter.emit(
                        "log",
                        message_id=message.message_id,
                        topic=message.options.get("topic"),
                        step=step,
                        data={"level": "info", "message": f"skipped a second copy of once-only message ({run_key})"},
                    )
                return None
        proxy = Delivery(message)
        proxy._tag = tag  # type: ignore[attr-defined]  # ours, on Dramatiq's proxy: the delivery to ack
        self.tags.add(tag)
        return proxy

    # -- settling (worker threads) ------------------------------------------
    def _settle_tag(self, message: MessageProxy) -> None:
        tag = getattr(message, "_tag", None)
        if tag not in self.tags:
            log.warning("message %s: its delivery belongs to a closed connection; RabbitMQ redelivers it", message.message_id)
            return
        self.tags.discard(tag)
        # Acks are batched: the first settled tag schedules one callback on the consumer thread,
        # which acks every tag settled by then (``_flush_acks``).
        with self.ack_lock:
            self.to_ack.append(tag)
            schedule, self.ack_scheduled = not self.ack_scheduled, True
        if not schedule:
            return
        try:
            self.connection.add_callback_threadsafe(self._flush_acks)
        except Exception as exc:  # the connection is gone: RabbitMQ redelivers the message
            log.warning("acking %s on %s failed (%s); it will be redelivered", message.message_id, self.queue_name, exc)

    def _flush_acks(self) -> None:
        """Ack the settled tags (consumer thread): one ``multiple`` ack for those below every unsettled tag.

        Tags are handed out in increasing order, so a ``multiple`` ack up to T
        covers exactly the deliveries up to T, which are all settled when no
        unsettled tag is below T; the rest are acked one by one. Fewer frames,
        and one settle command on the quorum queue instead of one per message.
        """
        with self.ack_lock:
            batch, self.to_ack, self.ack_scheduled = self.to_ack, [], False
        if not batch:
            return
        self.unsettled.difference_update(batch)
        low = min(self.unsettled, default=None)
        below = [t for t in batch if low is None or t < low]
        if below:
            self.channel.basic_ack(max(below), multiple=True)
        for t in batch:
            if low is not None and t > low:
                self.channel.basic_ack(t)

    def ack(self, message: MessageProxy) -> None:
        outcome = message.options.get("iii_outcome")
        if outcome is None and getattr(message, "_exception", None) is not None:
            outcome = message.options["iii_outcome"] = IIIConsumer._undecided(self, message, message._exception)  # type: ignore[arg-type]
        event = getattr(message, "iii_event", None)
        try:
            if outcome is None:
                pass
            elif outcome["kind"] == "retry":
                # The delayed copy is confirmed before the original is acked: a crash in
                # between runs it twice, never zero times.
                options = {k: v for k, v in message.options.items() if k not in ("iii_outcome", "eta")}
                new: Message[Any] = Message(
                    queue_name=self.queue_name,
                    actor_name=message.actor_name,
                    args=message.args,
                    kwargs=message.kwargs,
                    options=options,
                    message_id=message.message_id,
                    message_timestamp=message.message_timestamp,
                )
                self.broker.publish_to_queue(self.queue_name, new.encode(), int(outcome["delay_ms"]))
            else:
                decision: DeadDecision = outcome
                entry = entry_for(message, decision)
                event = self.broker.dead_event(entry, deliveries=decision.get("deliveries"))
                self.broker.store_dead_letter(entry)
        except redis.RedisError as e:
            raise ConnectionClosed(e) from None
        self._settle_tag(message)
        if self.broker.emitter is not None:
            self.broker.emitter.put(event)

    def nack(self, message: MessageProxy) -> None:
        # What Dramatiq cannot run at all (unknown actor, `throws`) goes to our dead-letter store.
        exc = getattr(message, "_exception", None)
        message.options["iii_outcome"] = dead(
            self.broker.dead_letter_queue(message.options.get("topic", "")),
            describe(exc) if exc else "rejected",
            attempts=attempts_of(message),
            fanin="dead",
        )
        self.ack(message)

    def requeue(self, messages: Any) -> None:
        """Give back messages fetched but never started (a stop): not a delivery.

        A quorum queue counts every return (a nack, a closed channel) as a
        delivery, so restarts would push prefetched messages toward
        ``max_deliveries``. Instead each goes back as a fresh copy, confirmed,
        and only then is the original acked (it joins the back of its queue; a
        crash in between leaves both, so it may run twice). Called by Dramatiq
        once the consumer thread has ended, so this thread owns the connection.
        """
        for message in messages:
            tag = getattr(message, "_tag", None)
            if tag in self.tags:
                self._give_back(tag, message._message.encode())
                self.tags.discard(tag)

    def _drop_held(self) -> None:
        """Forget the held deliveries (RabbitMQ took them back with the channel)."""
        for method, _body in self.held:
            self.unsettled.discard(method.delivery_tag)
        self.held = []

    def _give_back(self, tag: int, body: bytes) -> None:
        if not self.channel.is_open:
            # The channel is gone and RabbitMQ has the delivery back already: a copy would run it twice.
            self.unsettled.discard(tag)
            return
        try:
            self.broker.publish_to_queue(self.queue_name, body)
            self.unsettled.discard(tag)
            self.channel.basic_ack(tag)
        except Exception as exc:  # not acked: closing the connection returns it (counted as a delivery)
            log.warning("returning a prefetched message to %s failed (%s); RabbitMQ redelivers it", self.queue_name, exc)

    def close(self) -> None:
        """Stop consuming, give back what was delivered but not handed over, flush the acks, close.

        Deliveries pika holds for the generator (pushed after an ack freed a
        prefetch slot, once the consumer thread stopped reading) are taken out
        first: cancelling would nack them, and a quorum queue counts a nack as a
        delivery. The cancel then flushes the worker threads' acks; the server
        has stopped pushing by the time it reads them.
        """
        back, self.held = list(self.held), []
        try:
            pending = getattr(getattr(self.channel, "_queue_consumer_generator", None), "pending_events", None)
            while pending:
                method, _props, body = next(self.iterator)
                if method is None:
                    break
                back.append((method, body))
            self.channel.cancel()
        except Exception as exc:
            log.debug("cancelling the consumer of %s: %s", self.queue_name, exc)
        for method, body in back:
            self._give_back(method.delivery_tag, body)
        try:
            done = threading.Event()
            self.connection.add_callback_threadsafe(done.set)
            deadline = time.monotonic() + 5
            while not done.is_set() and time.monotonic() < deadline:
                self.connection.process_data_events(time_limit=0.05)
        except Exception:
            pass
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception:
            pass
