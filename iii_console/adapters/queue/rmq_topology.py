"""RabbitMQ names, declarations and confirmed publishing, shared by producers, workers and replay.

Topology (``P`` is ``rabbitmq.prefix``):

- ``P.topic.TOPIC``: a direct exchange per topic; routing key = the priority.
  Each subscribed step's queue of that priority is bound to it, so one
  publish fans out to every step (and one confirm covers every copy).
- ``P.TOPIC--STEP--PRIORITY``: a quorum queue per subscription and priority,
  with ``x-delivery-limit`` (``max_deliveries - 1`` redeliveries) and
  at-least-once dead-lettering into ``P.dead``.
- ``P.delay.MS``: one quorum queue (behind a fanout exchange of the same name)
  per distinct delay, with ``x-message-ttl = MS`` and the default exchange as
  its dead-letter exchange: a message published there with the routing key of
  its target queue lands on that queue when its time is up. Every message in
  one delay queue has the same TTL, so expiry order is queue order.
- ``P.dead``: the dead-letter exchange (fanout) and its quorum queue, read by
  the ingester that writes our dead-letter store in Redis.
- ``P.health``: a quorum queue at most one message long, where ``/health``'s
  probe publishes (``rmq_watch.RabbitHealth``); nothing reads it.

Quorum queues refuse ``x-max-priority``; priority is three queues (see
``rmq_broker.py``). At-least-once dead-lettering needs ``x-overflow:
reject-publish``: a publish to a full queue is refused (nack), never dropped.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions
import redis
from dramatiq.errors import ConnectionClosed

from iii_console.core.keys import Keys

log = logging.getLogger(__name__)


def _not_a_missing_queue(record: logging.LogRecord) -> bool:
    """Drop pika's warning for a channel RabbitMQ closed with 404 (a passive declare of a queue
    no worker has declared yet: the depth readers expect it, catch it and reopen the channel)."""
    return "Channel.Close (404)" not in record.getMessage()


logging.getLogger("pika.channel").addFilter(_not_a_missing_queue)
# pika logs every failed connect and closed channel on its own, before our code decides what
# it means (a retry on the next node, a 503 with Retry-After, /health's answer, our own
# warning): as Dramatiq's own CLI does, only its critical lines are kept.
logging.getLogger("pika").setLevel(logging.CRITICAL)

#: Publish attempts (each on a fresh connection after the first fails) before giving up.
PUBLISH_ATTEMPTS = 3
AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)
#: How long one publish waits for RabbitMQ's confirm. A quorum queue that has lost the
#: majority of its nodes takes publishes but never confirms them: without this bound an
#: enqueue (and the HTTP request behind it) would wait until the majority is back.
CONFIRM_TIMEOUT_S = 5.0


class ConfirmTimeout(pika.exceptions.AMQPError):
    """No confirm within ``CONFIRM_TIMEOUT_S``: the message may or may not have been taken."""


class PublishingBlocked(pika.exceptions.AMQPError):
    """RabbitMQ blocked this connection (``connection.blocked``): a memory or disk alarm is on."""


class BrokerUnavailable(ConnectionClosed, redis.ConnectionError):
    """RabbitMQ refused or could not be reached: the caller may try again.

    Both a Dramatiq ``ConnectionClosed`` (a worker's settle is retried until it
    goes through) and a ``redis.ConnectionError``, which the HTTP server and the
    runtime's retry loops already treat as "storage away": a ``503`` with
    ``Retry-After``, never a ``500``.
    """


def bounded(connection: Any, seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` (a publish waiting for its confirm, on ``connection``), ended by :class:`ConfirmTimeout` after ``seconds``.

    The timer is the I/O loop's own (``BlockingConnection.call_later`` only fires in
    ``process_data_events``, not while a publish waits for its confirm); a timer that
    raises ends that wait, and the caller then drops the connection.
    """
    ioloop = connection._impl.ioloop

    def expire() -> None:
        raise ConfirmTimeout(f"no publisher confirm within {seconds:g} s (a quorum queue without a majority?)")

    timer = ioloop.call_later(seconds, expire)
    try:
        return fn()
    finally:
        ioloop.remove_timeout(timer)


def abort_connection(connection: Any) -> None:
    """Close a pika ``BlockingConnection``'s socket at once (pika has no public abort): a graceful close
    waits for RabbitMQ to close each channel, which a channel with an unconfirmed publish can make a minute."""
    try:
        connection._impl._adapter_disconnect_stream()
        connection.process_data_events(0)
    except Exception:
        pass


def blocked_reason(frame: Any) -> str:
    """RabbitMQ's reason in a ``connection.blocked`` frame ("low on memory", "low on disk")."""
    return str(getattr(frame.method, "reason", "") or "blocked")


#: url -> (RabbitMQ's reason, monotonic time it was seen) while a resource alarm blocks publishing on it,
#: as learnt by this process's publishers; ``/health`` reads it (:func:`alarm_of`).
_ALARMS: dict[str, tuple[str, float]] = {}
_ALARMS_LOCK = threading.Lock()
#: The routing key of the alarm watch's probe: no queue is bound to it, so RabbitMQ drops the probe.
PROBE_ROUTING_KEY = "iii-console.alarm-probe.unroutable"


def alarm_of(url: str) -> tuple[str, float] | None:
    """``(reason, seconds blocked)`` while a publisher of this process to ``url`` is blocked by a resource alarm."""
    with _ALARMS_LOCK:
        got = _ALARMS.get(url)
    return None if got is None else (got[0], time.monotonic() - got[1])


def parameters(url: str) -> list[pika.URLParameters]:
    """Connection parameters of each ``;``-separated URL (one per node of a cluster; pika tries them in turn)."""
    out = []
    for u in filter(None, (part.strip() for part in url.split(";"))):
        p = pika.URLParameters(u)
        p.connection_attempts = 1
        p.socket_timeout = 5
        p.blocked_connection_timeout = 30
        out.append(p)
    return out


#: The longest wait one delay queue holds a message. RabbitMQ's message TTL is an Erlang timer, at most
#: 2**32 - 1 ms (49.7 days); a quorum queue takes a longer ``x-message-ttl`` without a word, and what its
#: messages then do is not documented. A longer delay is waited out in hops of at most this, the message
#: carrying its due time (``iii_due_ms``): each hop's end sends it on for the rest (``RabbitConsumer``).
MAX_HOP_MS = 2_000_000_000  # 23 days; its bucket is itself


def delay_bucket(delay_ms: int) -> int:
    """``delay_ms`` rounded up to two significant digits: the delay queue that holds it.

    Configured delays (300, 1500, 60000) keep their value; computed ones (a
    throttle's wait, a ``Retry-After``) share a bounded set of queues (at most
    90 per power of ten) instead of one quorum queue each. A message never runs
    early, at most 10 % late.
    """
    ms = min(max(1, int(delay_ms)), MAX_HOP_MS)
    step = 10 ** max(0, len(str(ms)) - 2)
    return -(-ms // step) * step


class Topology:
    def __init__(self, prefix: str, max_deliveries: Callable[[str], int]):
        self.prefix = prefix
        #: topic -> its ``max_deliveries`` (the queue's delivery limit is one less: redeliveries).
        self.max_deliveries = max_deliveries
        #: Delays recorded in Redis by this process (:meth:`note_delay`).
        self._noted: set[int] = set()

    # -- names --------------------------------------------------------------
    def queue(self, queue_name: str) -> str:
        return f"{self.prefix}.{queue_name}"

    def local(self, rabbit_queue: str) -> str:
        """``P.t--S--normal`` -> ``t--S--normal``."""
        return rabbit_queue.removeprefix(f"{self.prefix}.")

    def exchange(self, topic: str) -> str:
        return f"{self.prefix}.topic.{topic}"

    def delay(self, delay_ms: int) -> str:
        return f"{self.prefix}.delay.{delay_bucket(delay_ms)}"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    # -- declarations -------------------------------------------------------
    def work_queue_args(self, topic: str) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": max(0, int(self.max_deliveries(topic)) - 1),
            "x-dead-letter-exchange": self.dead,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def declare_dead(self, channel: Any) -> None:
        channel.exchange_declare(self.dead, exchange_type="fanout", durable=True)
        channel.queue_declare(self.dead, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(self.dead, self.dead)

    def declare_subscription(self, channel: Any, topic: str, queue_names: list[str]) -> None:
        """Declare the exchange of ``topic`` (the topic enqueues name) and queues bound to it by priority."""
        self.declare_dead(channel)
        channel.exchange_declare(self.exchange(topic), exchange_type="direct", durable=True)
        for q in queue_names:
            priority = q.rsplit("--", 1)[1]
            channel.queue_declare(self.queue(q), durable=True, arguments=self.work_queue_args(topic))
            channel.queue_bind(self.queue(q), self.exchange(topic), routing_key=priority)

    def declare_delay(self, channel: Any, delay_ms: int) -> None:
        delay_ms = delay_bucket(delay_ms)
        name = self.delay(delay_ms)
        channel.exchange_declare(name, exchange_type="fanout", durable=True)
        channel.queue_declare(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": int(delay_ms),
                "x-dead-letter-exchange": "",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        channel.queue_bind(name, name)

    def note_delay(self, delay_ms: int, client: redis.Redis, keys: Keys) -> None:
        """Record the delay queue of ``delay_ms`` in ``keys.broker_delays`` (a Redis set), so the depth copy
        counts what waits in it; once per process and delay. Best effort: a delayed publish does not wait for
        Redis (a failed write is tried again on the next publish of that delay)."""
        bucket = delay_bucket(delay_ms)
        if bucket in self._noted:
            return
        try:
            client.sadd(keys.broker_delays, bucket)
        except redis.RedisError as exc:
            log.info("delay queue %s not recorded in Redis yet: %s", bucket, type(exc).__name__)
            return
        self._noted.add(bucket)


class Publisher:
    """Confirmed publishing from any thread: one connection and confirm channel per thread.

    ``publish`` returns only once RabbitMQ confirmed the message (written to a
    majority of each quorum queue it was routed to); a message it could route
    nowhere (``mandatory``) or a nack raises. ``declare(fn)`` runs ``fn(channel)``
    once per key and process, before the first publish that needs it.
    """

    def __init__(self, url: str, *, confirm_timeout: float = CONFIRM_TIMEOUT_S):
        self.params = parameters(url)
        self.confirm_timeout = confirm_timeout
        self._local = threading.local()
        self._declared: set[Any] = set()
        self._declare_locks: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()
        self._all: list[Any] = []
        self.url = url
        #: RabbitMQ's reason ("low on memory", "low on disk") while it blocks our publishes, else ``None``.
        self.blocked: str | None = None
        self._watch: threading.Thread | None = None
        self._closed = threading.Event()

    def channel(self) -> Any:
        ch = getattr(self._local, "channel", None)
        if ch is None or not ch.is_open:
            self._drop()
            conn = pika.BlockingConnection(self.params)
            # The connection's own callback (pika's BlockingConnection would only run its callbacks after the
            # publish's wait): it runs in the wait, and its timer ends that wait at once.
            conn._impl.add_on_connection_blocked_callback(self._on_blocked)
            ch = conn.channel()
            ch.confirm_delivery()
            self._local.connection, self._local.channel = conn, ch
            with self._lock:
                self._all.append(conn)
        return ch

    def _declare_lock(self, key: Any) -> threading.Lock:
        with self._lock:
            return self._declare_locks.setdefault(key, threading.Lock())

    def _drop(self, *, abort: bool = False) -> None:
        conn = getattr(self._local, "connection", None)
        self._local.connection = self._local.channel = None
        if conn is not None:
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            if abort:
                abort_connection(conn)
                return
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass

    def run(self, fn: Callable[[Any], Any], *, declare: Sequence[tuple[Any, Callable[[Any], object]]] = ()) -> Any:
        """Run ``fn(channel)`` after the ``declare`` steps not yet done, retrying on a new connection."""
        last: BaseException | None = None
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                ch = self.channel()
                for key, how in declare:
                    if key in self._declared:
                        continue
                    # One thread declares a key at a time: RabbitMQ (3.10) refuses two connections declaring one
                    # new quorum queue at once, and answers a consume that follows the second declare too early.
                    with self._declare_lock(key):
                        if key not in self._declared:
                            how(ch)
                            self._declared.add(key)
                return bounded(self._local.connection, self.confirm_timeout, functools.partial(fn, ch))
            except PublishingBlocked:
                # The publish that ran into the alarm stays in RabbitMQ's socket buffer, unread: it may be
                # taken when the alarm clears (like a confirm timeout). Aborting keeps this thread from waiting.
                self._drop(abort=True)
                raise self._refusal() from None
            except ConfirmTimeout as exc:
                # Not retried: the publish may yet be confirmed, and the caller's answer (a 503) says "try again".
                # No graceful close either: the broker holds a channel with unconfirmed publishes for up to a minute.
                self._drop(abort=True)
                raise BrokerUnavailable(f"RabbitMQ: {exc}") from None
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                # A confirm that says no: the queue was gone (redeclare), full, or had just lost its leader;
                # a new channel, since one that published to a lost leader can go on being refused.
                last = exc
                self._declared.difference_update(k for k, _ in declare)
                self._drop()
            except AMQP_ERRORS as exc:
                last = exc
                self._drop()
            time.sleep(min(0.1 * 2**attempt, 1.0))
        raise BrokerUnavailable(f"RabbitMQ: {type(last).__name__}: {last}") from None

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        declare: Sequence[tuple[Any, Callable[[Any], object]]] = (),
        headers: dict[str, Any] | None = None,
    ) -> None:
        if self.blocked is not None:
            raise self._refusal()
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", headers=headers)
        self.run(lambda ch: ch.basic_publish(exchange, routing_key, body, properties=props, mandatory=True), declare=declare)

    # -- resource alarms ------------------------------------------------------
    def _refusal(self) -> BrokerUnavailable:
        return BrokerUnavailable(f"RabbitMQ blocked publishing: resource alarm ({self.blocked or 'blocked'}); try again")

    def _on_blocked(self, impl: Any, frame: Any) -> None:
        """``connection.blocked`` on a publishing connection (in its thread, while a publish waits for its confirm)."""
        reason = blocked_reason(frame)
        self._set_blocked(reason)

        def refuse() -> None:
            raise PublishingBlocked(reason)

        impl.ioloop.call_later(0, refuse)

    def _set_blocked(self, reason: str) -> None:
        with self._lock:
            first = self.blocked is None
            self.blocked = reason
            if first and not self._closed.is_set():
                self._watch = threading.Thread(target=self._watch_alarm, name="iii-rmq-alarm", daemon=True)
                self._watch.start()
        if first:
            with _ALARMS_LOCK:
                _ALARMS.setdefault(self.url, (reason, time.monotonic()))
            log.warning("RabbitMQ blocked publishing (resource alarm: %s): enqueues are refused until it clears", reason)

    def _watch_alarm(self) -> None:
        """Publish a probe (unroutable, so dropped) on a connection of its own until RabbitMQ takes it: it confirms
        the probe only once it reads from the connection again, i.e. once the alarm has cleared.

        Each round ends within the connection's ``blocked_connection_timeout`` (30 s); the watch ends with the alarm
        or with :meth:`close`.
        """
        t0 = time.monotonic()
        while not self._closed.is_set():
            conn = None
            try:
                conn = pika.BlockingConnection(self.params)
                conn._impl.add_on_connection_blocked_callback(lambda _c, f: self._note_reason(f))
                ch = conn.channel()
                ch.confirm_delivery()
                ch.basic_publish("", PROBE_ROUTING_KEY, b"", properties=pika.BasicProperties(delivery_mode=1))
                break
            except AMQP_ERRORS as exc:
                log.debug("RabbitMQ alarm probe: %s", exc)
                self._closed.wait(1.0)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
        with self._lock:
            self.blocked, self._watch = None, None
        with _ALARMS_LOCK:
            _ALARMS.pop(self.url, None)
        if not self._closed.is_set():
            log.warning("RabbitMQ unblocked publishing after %.1f s: enqueues resume", time.monotonic() - t0)

    def _note_reason(self, frame: Any) -> None:
        reason = blocked_reason(frame)
        self.blocked = reason
        with _ALARMS_LOCK:
            if self.url in _ALARMS:
                _ALARMS[self.url] = (reason, _ALARMS[self.url][1])

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass
