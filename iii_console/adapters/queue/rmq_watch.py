"""What the rest of the deployment sees of RabbitMQ: queue depths copied into Redis, and a health check.

The console reads Redis only (it never connects to RabbitMQ), so the supervisor
of a RabbitMQ deployment runs a :class:`DepthMirror`: every second it reads
each subscribed queue's ready-message count (a passive ``queue_declare``, which
creates nothing) and the total waiting in the shared delay queues (their delays
are listed in Redis by whoever publishes to them), and writes them into one Redis
hash with a short TTL. A stopped deployment leaves no stale depths: the hash expires.

:class:`RabbitHealth` is ``/health``'s RabbitMQ check: one connection kept
open, probed at most every few seconds with a confirmed publish to a quorum queue of
its own (so a cluster without a majority fails it), each probe bounded in time; it
also fails while a resource alarm blocks this process's publishing
(``rmq_topology.alarm_of``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import pika
import pika.exceptions
import redis

from iii_console.adapters.queue.names import Subscription
from iii_console.adapters.queue.rmq_topology import (
    AMQP_ERRORS,
    ConfirmTimeout,
    PublishingBlocked,
    abort_connection,
    alarm_of,
    blocked_reason,
    bounded,
    parameters,
)
from iii_console.core.keys import Keys
from iii_console.core.queues import BROKER_DELAYED

log = logging.getLogger(__name__)

#: How often the depths are copied, and how long a copy stays readable without a newer one.
MIRROR_EVERY_S = 1.0
MIRROR_TTL_S = 5
#: Seconds an AMQP connect or probe may take before it counts as down.
PROBE_TIMEOUT_S = 2.0


def _params(url: str) -> list[pika.URLParameters]:
    out = parameters(url)
    for p in out:
        p.socket_timeout = PROBE_TIMEOUT_S
        p.stack_timeout = PROBE_TIMEOUT_S
        p.blocked_connection_timeout = PROBE_TIMEOUT_S
    return out


class DepthMirror:
    """Copies the ready-message count of each subscribed RabbitMQ queue into ``keys.broker_depths``."""

    def __init__(
        self,
        url: str,
        prefix: str,
        client: redis.Redis,
        keys: Keys,
        subscriptions: Iterable[Subscription],
        *,
        every_s: float = MIRROR_EVERY_S,
    ):
        self.params = _params(url)
        self.prefix = prefix
        self.client = client
        self.keys = keys
        self.every_s = every_s
        self._queues = self._names(subscriptions)
        self._delays: set[int] = set()
        self._conn: Any = None
        self._channel: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _names(subscriptions: Iterable[Subscription]) -> list[str]:
        return sorted({q for s in subscriptions for q in s.queues})

    def reload(self, subscriptions: Iterable[Subscription]) -> None:
        """Follow a reload of the steps (the next copy covers the new set of queues)."""
        self._queues = self._names(subscriptions)

    def _ch(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            if self._conn is None or not self._conn.is_open:
                self._conn = pika.BlockingConnection(self.params)
            self._channel = self._conn.channel()
        return self._channel

    def _ready(self, queue: str) -> int | None:
        try:
            return int(self._ch().queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            self._channel = None  # 404: not declared yet (the broker closed the channel, not the connection)
            return None

    def read(self) -> dict[str, int]:
        """Queue name -> ready messages (a queue no worker declared yet is left out), and under
        ``delayed`` the messages waiting in the shared delay queues (retries, delayed sends) of every topic."""
        out: dict[str, int] = {}
        for q in self._queues:
            n = self._ready(f"{self.prefix}.{q}")
            if n is not None:
                out[q] = n
        # Remembered as well as read: a Redis that lost the set still has its delay queues counted.
        self._delays.update(int(d) for d in self.client.smembers(self.keys.broker_delays))
        out[BROKER_DELAYED] = sum(self._ready(f"{self.prefix}.delay.{d}") or 0 for d in sorted(self._delays))
        return out

    def copy_once(self) -> dict[str, int]:
        """Read the depths and write them to Redis (replacing the last copy); returns what was written."""
        depths = self.read()
        pipe = self.client.pipeline()
        pipe.delete(self.keys.broker_depths)
        if depths:
            pipe.hset(self.keys.broker_depths, mapping=depths)
            pipe.expire(self.keys.broker_depths, MIRROR_TTL_S)
        pipe.execute()
        return depths

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.copy_once()
                failing = False
            except (*AMQP_ERRORS, redis.RedisError) as exc:
                # RabbitMQ or Redis away: the copy expires, the console shows no depths; try again.
                # Info, not a warning: /health and every enqueue already say RabbitMQ is away.
                if not failing:
                    log.info("queue depths not copied from RabbitMQ: %s", type(exc).__name__)
                failing = True
                self._close()
            self._stop.wait(self.every_s)

    def _close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        try:
            if conn is not None and conn.is_open:
                conn.close()
        except Exception:
            pass

    def __enter__(self) -> DepthMirror:
        self._thread = threading.Thread(target=self._run, name="iii-rmq-depths", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PROBE_TIMEOUT_S * 3)
        self._close()


class RabbitHealth:
    """``/health``'s RabbitMQ check: ``check()`` raises an AMQP or OS error when RabbitMQ cannot take work.

    A probe connects (or serves the kept connection's heartbeats) and, given a
    ``prefix``, publishes one empty message with a confirm to the quorum queue
    ``P.health`` (at most one message long: each probe's replaces the last). A
    cluster that has lost the majority of its nodes still accepts connections,
    but confirms nothing: the probe then raises :class:`ConfirmTimeout`, as every
    enqueue would. A result is reused for ``cache_s`` seconds, so a health check
    polled often (or by many probes) costs RabbitMQ at most one probe per period. A
    probe waits :data:`PROBE_TIMEOUT_S` at most for each step: the connect (a second
    connect when the kept connection turns out closed), then the confirm; a connection
    that failed is dropped with its socket closed at once, never a graceful close.
    """

    def __init__(self, url: str, *, prefix: str | None = None, cache_s: float = 2.0, confirm_s: float = PROBE_TIMEOUT_S):
        self.params = _params(url)
        self.url = url
        self.cache_s = cache_s
        self.confirm_s = confirm_s
        self.queue = f"{prefix}.health" if prefix else None
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Any = None
        #: RabbitMQ's reason while it blocks the probe's connection (a resource alarm), else ``None``.
        self._blocked: str | None = None
        self._at = 0.0
        self._error: BaseException | None = None

    def check(self) -> None:
        blocked = alarm_of(self.url)
        if blocked is not None:
            raise PublishingBlocked(blocked[0])
        with self._lock:
            if time.monotonic() - self._at > self.cache_s:
                self._error = self._probe()
                self._at = time.monotonic()
            if self._error is not None:
                raise self._error

    def _probe(self) -> BaseException | None:
        # A kept connection may have been closed by the server's heartbeat timeout while
        # nobody asked (it is only served on a probe): then a fresh one decides.
        for _ in range(2 if self._conn is not None else 1):
            try:
                if self._conn is None or not self._conn.is_open:
                    self._conn, self._channel, self._blocked = pika.BlockingConnection(self.params), None, None
                    self._conn._impl.add_on_connection_blocked_callback(self._on_blocked)
                    self._conn._impl.add_on_connection_unblocked_callback(self._on_unblocked)
                self._conn.process_data_events(time_limit=0)
                if not self._conn.is_open:
                    raise pika.exceptions.ConnectionClosed(320, "closed")
                if self.queue is not None:
                    bounded(self._conn, self.confirm_s, self._publish)
                    # Under a resource alarm RabbitMQ still takes a connection's first publish, then blocks it
                    # (``connection.blocked``, read here): the next publish would wait, so say so now.
                    self._conn.process_data_events(time_limit=0)
                    if self._blocked is not None:
                        raise PublishingBlocked(self._blocked)
                return None
            except (PublishingBlocked, ConfirmTimeout) as exc:
                # Not retried: a new connection would wait the same. A blocked connection says why.
                blocked = self._blocked
                self._drop()
                return PublishingBlocked(blocked) if blocked else exc
            except AMQP_ERRORS as exc:
                self._drop()
                error: BaseException = exc
        return error

    def _drop(self) -> None:
        """Forget the probe's connection, its socket closed at once (:func:`abort_connection`)."""
        conn, self._conn, self._channel, self._blocked = self._conn, None, None, None
        if conn is not None:
            abort_connection(conn)

    def _on_blocked(self, _conn: Any, frame: Any) -> None:
        """RabbitMQ blocked the probe's connection: a resource alarm (its reason names which)."""
        self._blocked = blocked_reason(frame)

    def _on_unblocked(self, _conn: Any, _frame: Any) -> None:
        self._blocked = None

    def _publish(self) -> None:
        """One confirmed publish to ``P.health`` (declared on first use); raises on a nack or a return."""
        if self._channel is None or not self._channel.is_open:
            ch = self._conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum", "x-max-length": 1})
            self._channel = ch
        self._channel.basic_publish("", self.queue, b"", properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
