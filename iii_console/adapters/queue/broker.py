"""Dramatiq's Redis broker with the weak spots closed.

- **Fetch returns ids**: a body that cannot be decoded is quarantined into the
  dead-letter store and acked, and the rest of the fetched batch flows on
  (stock Dramatiq raises out of the consumer and strands the batch).
- **Retry and dead-letter are atomic transitions done at ack time**
  (``move.lua``, ``dead.lua``): the new delayed copy or the DLQ entry is
  written before the in-flight message is released, in one script. If Redis is
  away the ack raises :class:`ConnectionClosed` and Dramatiq's own post-process
  loop retries it until Redis is back, so a retry is never lost (stock Retries
  re-enqueues, swallows the failure, then acks: the message is gone).
- **Strict priority in Redis**: a subscription's normal consumer fetches
  nothing while its high queue has messages waiting, and its low consumer
  nothing while high or normal do; otherwise a lower message, once fetched,
  runs whenever the higher consumer is between fetches.
- **Idle consumers block** on a per-queue wake list instead of polling with
  backoff, so a new message is picked up in milliseconds on an idle system:
  one thread per broker (``WakeHub``) blocks on all of them at once and wakes
  the consumer a token is for, and a consumer held back by a higher-priority
  backlog is woken by the fetch that drains it.
- **Delayed messages wait in Redis**, not in worker memory: a retry or a
  ``delay_ms`` message goes into its queue's ``.delayed`` sorted set, due at
  Redis's clock + delay, and ``promote.lua`` (run by every worker's promoter,
  ``delays.py``) moves due ones onto the queue. No worker holds a message it
  cannot run yet, so far-future messages cannot crowd out due ones, and a
  stop or a restart does not touch them.
- **Every settle writes its own event**: ``ack_many.lua``, ``move.lua`` and
  ``dead.lua`` write ``message.processed``, ``message.retrying`` and
  ``message.dead_lettered`` (with the metric counters) in the script that
  makes the transition (``lua/_events.lua``); a refused settle writes none.
- **Acks are committed in groups, written behind** (``AckGroup``): a worker
  thread hands its ack over and takes its next message; the acks that arrive
  while one call is on the wire go out together in the next, each still
  settled, with its event, only if this worker holds it, and its message
  keeps its prefetch slot until then.
- **The prefetch follows the pace**: Dramatiq's fixed 2 x threads made a drain of quick
  handlers fetch a few messages per call, and its threads wait on each fetch. A consumer
  holds about ``PREFETCH_AHEAD_S`` of work beyond what its threads run, at the rate it
  settles, between 2 and 8 x threads: quick handlers get 8 x threads, handlers of 50 ms
  or more Dramatiq's 2 x threads, so what can run ahead of a later higher-priority
  message stays a few tens of milliseconds of work.
- **A graceful return is not a delivery**: messages fetched but never started
  go back to the head of their queue with their delivery count undone
  (``requeue.lua``), so restarts never push a message to ``max_deliveries``.
- Stock maintenance (1 in 1000 commands, client clock, ``KEYS``) is off; the
  worker's sweep (``sweep.py``) recovers dead workers' messages on a timer,
  judged by Redis's clock, and a supervisor recovers its own crashed
  children's at once.

One module because the broker and its consumer are one protocol (Dramatiq's): each
settle the consumer makes is a broker transition.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from iii_console.adapters.queue.codec import decode_message
from iii_console.adapters.queue.deadletters import (
    DeadDecision,
    FaninOutcome,
    attempts_of,
    dead,
    dead_lettered,
    describe,
    entry_for,
    undecodable_entry,
)
from iii_console.adapters.queue.middleware import HookCache
from iii_console.adapters.queue.names import Subscription, parse_queue
from iii_console.adapters.queue.scripts import Scripts
from iii_console.core import ids
from iii_console.core.dlq import DeadLetter
from iii_console.core.errors import user_traceback
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys, as_str
from iii_console.core.steps import PRIORITIES

log = logging.getLogger(__name__)

#: How long an idle consumer waits for a wake-up before returning control to
#: Dramatiq's consumer loop (so a stopping worker notices within this). Such a
#: return costs no Redis call: the consumer fetches again only when woken.
IDLE_BLOCK_S = 0.5
#: An idle consumer fetches at least this often even with no wake token (a safety
#: net: every push onto a queue drops a token, and the wake hub hands it over).
IDLE_REFETCH_S = 5.0
#: How long the wake hub blocks in one BLPOP (it returns earlier on a token).
HUB_BLOCK_S = 5.0
#: A consumer's prefetch follows its pace: besides what its threads run, it holds about
#: this much of their work at the rate it settles messages (``IIIConsumer._pace``)...
PREFETCH_AHEAD_S = 0.05
#: ... never less than Dramatiq's prefetch (2 x threads), never more than this many times it.
PREFETCH_MAX_FACTOR = 4
#: How often a consumer measures its pace.
PACE_INTERVAL_S = 0.1


class IIIBroker(HookCache, RedisBroker):
    def __init__(
        self,
        *,
        client: redis.Redis,
        keys: Keys,
        emitter: Any = None,
        middleware: list[Any] | None = None,
        max_deliveries: Any = None,
        dead_letter_queue: Any = None,
    ):
        super().__init__(client=client, namespace=keys.dramatiq_namespace, middleware=middleware, maintenance_chance=0)
        self.keys = keys
        #: topic -> how many deliveries a message may have before it is dead-lettered unrun.
        self.max_deliveries = max_deliveries or (lambda _topic: 10)
        #: topic -> its dead-letter queue name.
        self.dead_letter_queue = dead_letter_queue or (lambda _topic: "dead-letters")
        self.emitter = emitter
        self.iii_scripts = Scripts(client)
        #: Acks of processed messages from every worker thread, committed in groups (``ack_many.lua``).
        self.acks = AckGroup(self._ack_many)
        # Blocking reads get their own connections so they never hold up acks.
        self.blocking_client = redis.Redis(connection_pool=client.connection_pool)
        #: Hands wake tokens to idle consumers: one BLPOP for all of this broker's queues.
        self.wake_hub = WakeHub(self.blocking_client, keys.wake_hub(self.broker_id))
        #: Moves due delayed messages onto their queues; started with the first consumer.
        self._promoter: threading.Thread | None = None
        self._promoter_stop = threading.Event()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        self.start_promoter()
        return super().consume(queue_name, prefetch, timeout)

    def start_promoter(self) -> None:
        """Run this broker's promoter (``delays.py``) if it is not running yet."""
        from iii_console.adapters.queue.delays import Promoter

        if self._promoter is None or not self._promoter.is_alive():
            self._promoter_stop.clear()
            promoter = Promoter(self.client, self.keys, self.iii_scripts, self._promoter_stop)
            self._promoter = threading.Thread(target=promoter.run_forever, name="iii-promoter", daemon=True)
            self._promoter.start()

    def settle_handed_over(self, timeout: float = 10.0) -> bool:
        """Commit the acks the worker threads handed over (``AckGroup.close``): a stop calls this before
        it gives back what the worker still holds, so no processed message is given back to run again.
        False if some could not be committed: their messages are still this worker's to give back."""
        return self.acks.close(timeout)

    def close(self) -> None:
        self.acks.close()  # what the worker threads handed over is committed before anything else stops
        self._promoter_stop.set()
        self.wake_hub.close()
        super().close()

    @property
    def consumer_class(self) -> type:
        return IIIConsumer

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue, without Dramatiq's delay queue: delayed messages wait in Redis (``.delayed``)."""
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Stock enqueue semantics through ``enqueue.lua`` (which also wakes idle consumers).

        A delayed message goes into its queue's ``.delayed`` set, due at Redis's
        clock + ``delay``. The runtime enqueues through ``producer.py``; this is
        for code that sends with Dramatiq's own ``actor.send``.
        """
        message = message.copy(options={"redis_message_id": ids.message_id()})
        message.options.pop("eta", None)
        self.emit_before("enqueue", message, delay)
        try:
            self.iii_scripts.enqueue(
                args=[
                    self.namespace,
                    "",
                    0,
                    int(delay or 0),
                    "",
                    "",
                    0,
                    "",
                    "",
                    message.queue_name,
                    message.options["redis_message_id"],
                    message.encode(),
                ]
            )
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
        self.emit_after("enqueue", message, delay)
        return message

    def transition(self, run: Any, *events: Any, message: Any = None) -> Any:
        """Run a settle script with its events (see ``Emitter.transition``).

        For a message, only its own lifecycle events so far (``iii_seq``, set by
        ``LifecycleEvents``) must reach the stream before its settle: a settle
        does not wait for other messages' events.
        """
        if self.emitter is None:
            return run("")
        return self.emitter.transition(run, *events, through=getattr(message, "iii_seq", None))

    def dead_letter(
        self,
        consumer_queue: str,
        message: Message[Any] | MessageProxy,
        entry: DeadLetter,
        *,
        outcome: FaninOutcome = "failed",
        deliveries: int | None = None,
    ) -> int:
        """Move an in-flight message into its dead-letter queue, with its ``message.dead_lettered`` event.

        The one place a dead letter is written: whoever decided it (the retry
        policy, the throttle, the consumer) hands over the entry, and ``dead.lua``
        stores it, releases the message and writes the event in one step. A fan-in
        child settles its group in the same script as ``outcome``: ``failed`` (its
        handler raised) or ``dead`` (it never ran to a result).
        """
        event = dead_lettered(self.emitter, entry, deliveries=deliveries) if self.emitter is not None else None
        return int(
            self.transition(
                lambda ev: self.iii_scripts.dead(
                    args=[
                        self.namespace,
                        consumer_queue,
                        self.broker_id,
                        message.options["redis_message_id"],
                        entry.dlq,
                        entry.id,
                        entry.encode(),
                        entry.last_failure_ms,
                        self.keys.dlq(entry.dlq),
                        self.keys.dlq_entries(entry.dlq),
                        self.keys.dlq_names,
                        *self.group_args(message),
                        outcome,
                        ev,
                    ]
                ),
                event,
                message=message,
            )
        )

    def group_args(self, message: Any) -> list[str]:
        """The settle scripts' fan-in arguments: the group's key (or "") and the message id."""
        gid = message.options.get("iii_group")
        return [self.keys.group(gid) if isinstance(gid, str) and gid else "", message.message_id or ""]

    def _ack_many(self, acks: list[_Ack]) -> list[int]:
        """Settle ``acks`` (processed messages) in one ``ack_many.lua`` call; 1 or 0 (not held) per ack.

        Each ack's ``message.processed`` is written only if its settle applies,
        after every event its message put before (the latest ``iii_seq`` of the
        group: one message's buffered events never land after its settle).
        """
        args: list[Any] = [self.namespace, self.broker_id]
        for a in acks:
            args += (a.queue, a.rid, a.group, a.mid)
        if self.emitter is None:
            return [int(r) for r in self.iii_scripts.ack_many(args=[*args[:2], "", *args[2:]])]
        throughs = [a.through for a in acks]
        through = None if None in throughs else max(t for t in throughs if t is not None)
        result = self.emitter.transition_many(
            lambda ev: self.iii_scripts.ack_many(args=[*args[:2], ev, *args[2:]]), [[a.event] for a in acks], through=through
        )
        return [int(r) for r in result]


class WakeHub:
    """One thread per broker that waits on the wake lists of all its consumers at once.

    An idle consumer used to block in its own ``BLPOP`` for at most
    ``IDLE_BLOCK_S`` and fetch again after each, so an idle worker made two
    Redis calls per queue twice a second. Now one ``BLPOP`` over every wake list
    of the process (and its own ``.hub`` list, pushed to when a queue is added
    or the broker closes) pops each token and sets the ``threading.Event`` of the
    consumers of that queue; an idle consumer waits on its event, and a timed-out
    wait costs no Redis call.
    """

    def __init__(self, client: redis.Redis, own_key: str):
        self._client = client
        self._own_key = own_key
        # A BLPOP must return before the client's socket timeout would cut it.
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._block_s = HUB_BLOCK_S if not timeout else max(0.1, min(HUB_BLOCK_S, float(timeout) / 2))
        self._lock = threading.Lock()
        #: wake list -> the events of the consumers waiting on it.
        self._waiters: dict[str, list[threading.Event]] = {}
        self._stop = False
        self._thread: threading.Thread | None = None

    def register(self, key: str) -> threading.Event:
        """A new event, set whenever a token arrives on ``key`` (from now on)."""
        event = threading.Event()
        with self._lock:
            new = key not in self._waiters
            self._waiters.setdefault(key, []).append(event)
            self._stop = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="iii-wake-hub", daemon=True)
                self._thread.start()
            elif new:
                self._poke()
        return event

    def unregister(self, key: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(key, [])
            if event in events:
                events.remove(event)
            if not events:
                self._waiters.pop(key, None)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            alive = self._thread is not None and self._thread.is_alive()
        if alive:
            self._poke()

    def _poke(self) -> None:
        """Make the hub's ``BLPOP`` return, so it takes up the current set of lists."""
        try:
            self._client.rpush(self._own_key, "1")
        except redis.RedisError:
            pass  # the hub picks the new list up when its BLPOP times out

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if self._stop:
                    return
                keys = [self._own_key, *self._waiters]
            try:
                got = self._client.blpop(keys, timeout=self._block_s)
                failures = 0
            except redis.RedisError as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "wake hub: Redis unavailable (%s); consumers fall back to fetching every %.0f s", exc, IDLE_REFETCH_S
                    )
                time.sleep(min(1.0, 0.05 * failures))
                self._wake_all()  # they look for themselves meanwhile
                continue
            if got is not None:
                with self._lock:
                    events = list(self._waiters.get(as_str(got[0]), ()))
                for event in events:
                    event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [e for es in self._waiters.values() for e in es]
        for event in events:
            event.set()


class Delivery(MessageProxy):
    """Dramatiq's message proxy with the message's fields as properties.

    ``MessageProxy`` reaches them through ``__getattr__``, which Python calls only
    after the ordinary lookup has failed and built its ``AttributeError``: each
    read of ``message.options`` cost an exception. The middleware, the runner and
    the settle read these fields some thirty times per message.
    """

    queue_name = property(lambda self: self._message.queue_name)
    actor_name = property(lambda self: self._message.actor_name)
    args = property(lambda self: self._message.args)
    kwargs = property(lambda self: self._message.kwargs)
    options = property(lambda self: self._message.options)
    message_id = property(lambda self: self._message.message_id)
    message_timestamp = property(lambda self: self._message.message_timestamp)


class _Ack:
    """One processed message waiting in an :class:`AckGroup`."""

    __slots__ = ("error", "event", "group", "mid", "owner", "queue", "rid", "through")

    def __init__(self, queue: str, rid: str, group: str, mid: str, event: Any, through: int | None, owner: Any):
        self.queue, self.rid, self.group, self.mid = queue, rid, group, mid
        self.event, self.through = event, through
        #: Told once the settle is in (``owner.settled(mid)``): the consumer that fetched the message.
        self.owner = owner
        self.error: BaseException | None = None


class AckGroup:
    """Group commit of acks, written behind: a worker thread hands its ack over and goes on.

    Dramatiq settles from each worker thread, so 8 threads made 8 separate
    script round trips (and, with events on, queued on the event sink's flush
    lock one after another). Here the ack that arrives while no call is on the
    wire commits at once (no timer: an idle worker's ack adds no latency), and
    its thread goes on committing, in one call each, whatever acks arrived
    meanwhile, until none is waiting. The other threads do not wait for their
    ack's call: each hands its ack over and takes its next message, so no thread
    parks and wakes again per message (on two busy cores that convoy cost the
    event stream a tenth to a fifth of the drain's throughput).

    Each ack's message stays in this worker's in-flight set in Redis, and counts
    against the consumer's prefetch, until its call applies it: the consumer is
    told (``owner.settled``) only then. Every ack's outcome is its own: settled,
    or not held by this worker any more (swept: the script writes nothing for
    it). A call that fails is retried by the committing thread, with back-off,
    until it applies, as Dramatiq retries a failed ack (a connection error,
    Redis refusing a key of the wrong type); acks that arrive meanwhile join the
    next attempt. A call Redis refuses for what is in it is retried one ack at a
    time, so one bad queue does not hold up the others. The ``SREM`` of each
    settle makes an attempt that had applied before its reply was lost write
    nothing twice. If the process dies first, the messages are still in flight
    in Redis and are redelivered (``message.redelivered``), exactly as if it had
    died in their handlers.
    """

    #: Back-off between attempts at a failed call: doubles from the first to the last.
    RETRY_FIRST_S = 0.05
    RETRY_MAX_S = 2.0

    def __init__(self, commit: Any):
        #: ``commit(acks) -> [1 or 0 per ack]``: one script call.
        self._commit = commit
        self._lock = threading.Lock()
        #: Notified when the committer goes idle (``close`` waits for it) and, while it backs
        #: off after a failed call, when a new ack arrives (it is committed without waiting).
        self._cond = threading.Condition(self._lock)
        self._waiting: list[_Ack] = []
        self._busy = False
        self._backing_off = False
        self._closed = False
        #: Acks a stop gave up on (Redis away): their messages stay in flight, to be given back.
        self._given_up = 0
        #: Calls made and acks they carried (for tests and the benchmarks).
        self.calls = 0
        self.acks = 0

    def ack(self, queue: str, rid: str, group: str, mid: str, event: Any, through: int | None, owner: Any) -> None:
        """Hand a processed message's settle over; commit it (and what gathers meanwhile) if no call is on the wire."""
        me = _Ack(queue, rid, group, mid, event, through, owner)
        with self._lock:
            self._waiting.append(me)
            if self._busy:
                if self._backing_off:
                    self._cond.notify_all()
                return
            self._busy = True
        self._lead()

    def _lead(self) -> None:
        held: list[_Ack] = []  # taken and not applied yet: retried, or given back if this thread is interrupted
        attempts = 0
        try:
            while True:
                with self._lock:
                    held += self._waiting
                    self._waiting = []
                    if not held:
                        self._stand_down()
                        return
                failed = self._run(held)
                for a in held:
                    if a.error is None:
                        a.owner.settled(a.mid)
                done, held = len(held) - len(failed), failed
                if not held:
                    if attempts:
                        log.info("settled %d message(s) after %d failed attempt(s)", done, attempts)
                    attempts = 0
                    continue
                attempts += 1
                if attempts == 1 or attempts % 30 == 0:
                    for a in held[:5]:
                        log.error("settling message %s on %s failed: %s; will retry", a.mid, a.queue, a.error)
                    if len(held) > 5:
                        log.error("... and %d more; will retry", len(held) - 5)
                for a in held:
                    a.error = None
                with self._lock:
                    if self._closed:
                        # Stopping: the messages stay in this worker's in-flight set and are redelivered.
                        n = len(held) + len(self._waiting)
                        self._given_up += n
                        log.warning("stopping with %d message(s) not settled: they will be redelivered", n)
                        held, self._waiting = [], []
                        self._stand_down()
                        return
                    if not self._waiting:  # nothing new to commit meanwhile: back off
                        self._backing_off = True
                        self._cond.wait(min(self.RETRY_MAX_S, self.RETRY_FIRST_S * 2 ** (attempts - 1)))
                        self._backing_off = False
        except BaseException:
            # Not a failed call (``_run`` catches those): this thread was interrupted. What it
            # held goes back for the next ack's thread (or ``close``) to commit.
            with self._lock:
                self._waiting[:0] = held
                self._stand_down()
            raise

    def _stand_down(self) -> None:
        """No call on the wire any more (lock held): the next ack's thread commits; ``close`` may go on."""
        self._busy = False
        self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Commit what is still handed over (waiting up to ``timeout`` for a call on the wire), then stop
        retrying. True if every ack handed over was applied; False if some were given up on (their
        messages are still in this worker's in-flight set) or a failing call is still being retried."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._busy:
                self._cond.notify_all()  # a committer backing off tries once more now
                left = deadline - time.monotonic()
                if left <= 0:
                    self._closed = True
                    return False
                self._cond.wait(min(left, 0.1))
            self._closed = True
            if self._waiting:
                self._busy = True
            else:
                return self._given_up == 0
        self._lead()
        return self._given_up == 0

    def _run(self, acks: list[_Ack]) -> list[_Ack]:
        """Commit ``acks`` in one call (one at a time if Redis refuses the call for what is in it); the ones that failed."""
        self.calls += 1
        self.acks += len(acks)
        try:
            self._commit(acks)  # each settle's own outcome (held or not) needs nothing more here
        except redis.ResponseError as exc:
            if len(acks) == 1 or isinstance(exc, redis.exceptions.NoScriptError):
                _fail(acks, exc)
                return acks
            failed: list[_Ack] = []
            for a in acks:  # refused for what is in it: find the ack it is about
                failed += self._run([a])
            return failed
        except Exception as exc:
            _fail(acks, exc)
            return acks
        return []


def _fail(acks: list[_Ack], exc: BaseException) -> None:
    for a in acks:
        a.error = exc


class IIIConsumer(Consumer):
    def __init__(self, broker: IIIBroker, queue_name: str, prefetch: int, timeout: int):
        self.broker = broker
        self.queue_name = queue_name
        self.timeout = timeout
        self.cache: list[tuple[str, bytes | None, int]] = []
        self.queued_message_ids: set[str] = set()
        self.wake_key = broker.keys.queue_wake(queue_name)
        self.block_s = IDLE_BLOCK_S
        #: Set by the broker's wake hub when a token lands on this queue's wake list.
        self.woken = broker.wake_hub.register(self.wake_key)
        #: While idle (the last fetch found nothing): when to fetch again without a token.
        self._refetch_at: float | None = None
        #: Set by ``ack`` (worker threads) so a consumer at prefetch wakes as soon as a slot frees.
        self.slot_freed = threading.Event()
        #: ``prefetch``, and ``fetch_min``: fetch only once that many slots are free.
        self._set_prefetch(prefetch)
        #: Dramatiq's prefetch (2 x threads): ``prefetch`` moves between it and ``PREFETCH_MAX_FACTOR`` times it.
        self.base_prefetch = prefetch
        #: Settles since the pace was last measured (``settled``; a lost increment between threads only blurs it).
        self._settles = 0
        self._pace_from = time.monotonic()
        self._pace_due = self._pace_from + PACE_INTERVAL_S
        #: Queues of higher priority for the same subscription: this consumer
        #: fetches nothing while any has messages waiting (strict priority).
        self.higher: list[str] = _higher_queues(queue_name)

    @property
    def outstanding_message_count(self) -> int:
        return len(self.queued_message_ids) + len(self.cache)

    # -- settling -----------------------------------------------------------
    def ack(self, message: MessageProxy) -> None:
        outcome = message.options.get("iii_outcome")
        failure = getattr(message, "_exception", None)
        if outcome is None and failure is not None:
            # The handler failed but no retry decision was written (the policy
            # itself raised, and Dramatiq only logs that): dead-letter rather
            # than ack a failed message as done.
            outcome = message.options["iii_outcome"] = self._undecided(message, failure)
        if outcome is None:
            # Written behind: the message leaves the prefetch count when its call applies (``settled``).
            gkey, mid = self.broker.group_args(message)
            self.broker.acks.ack(
                self.queue_name,
                message.options["redis_message_id"],
                gkey,
                mid,
                getattr(message, "iii_event", None),
                getattr(message, "iii_seq", None),
                self,
            )
            return
        try:
            if outcome["kind"] == "retry":
                self._retry(message, outcome["delay_ms"])
            else:
                self._dead(message, outcome)
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
        except redis.RedisError as e:
            # Not a connection error but the write still failed (e.g. a key of
            # the wrong type): keep the message in flight and let Dramatiq's
            # post-process loop try again, rather than drop it.
            log.error("settling message %s on %s failed: %s; will retry", message.message_id, self.queue_name, e)
            raise ConnectionClosed(e) from None
        self.settled(message.message_id)

    def settled(self, message_id: str) -> None:
        """``message_id``'s settle is in: its prefetch slot is free."""
        self.queued_message_ids.discard(message_id)
        self._settles += 1
        if not self.slot_freed.is_set():  # set() takes a lock and notifies even when already set
            self.slot_freed.set()

    def nack(self, message: MessageProxy) -> None:
        # Dramatiq nacks what it cannot run at all (unknown actor, `throws`).
        # Those go to our dead-letter store like any other dead message.
        exc = getattr(message, "_exception", None)
        message.options["iii_outcome"] = dead(
            self.broker.dead_letter_queue(message.options.get("topic", "")),
            describe(exc) if exc else "rejected",
            attempts=attempts_of(message),
            fanin="dead",
        )
        self.ack(message)

    def _undecided(self, message: MessageProxy, exc: BaseException) -> DeadDecision:
        try:
            tb = user_traceback(exc)
        except Exception:
            tb = ""
        error = f"{describe(exc)} (no retry decision could be made for it)"
        log.error("dead-lettering %s on %s: %s", message.message_id, self.queue_name, error)
        return dead(
            self.broker.dead_letter_queue(message.options.get("topic", "")), error, traceback=tb, attempts=attempts_of(message)
        )

    def _retry(self, message: MessageProxy, delay_ms: int) -> None:
        base = q_name(self.queue_name)
        options = {k: v for k, v in message.options.items() if k not in ("iii_outcome", "eta")}
        options.update(redis_message_id=ids.message_id(), due_ms=now_ms() + int(delay_ms))
        new: Message[Any] = Message(
            queue_name=base,
            actor_name=message.actor_name,
            args=message.args,
            kwargs=message.kwargs,
            options=options,
            message_id=message.message_id,
            message_timestamp=message.message_timestamp,
        )
        args = [
            self.broker.namespace,
            self.queue_name,
            self.broker.broker_id,
            message.options["redis_message_id"],
            base,
            options["redis_message_id"],
            new.encode(),
            int(delay_ms),
        ]
        self.broker.transition(
            lambda ev: self.broker.iii_scripts.move(args=[*args, ev]), getattr(message, "iii_event", None), message=message
        )

    def _dead(self, message: Message[Any] | MessageProxy, decision: DeadDecision) -> None:
        self.broker.dead_letter(
            self.queue_name,
            message,
            entry_for(message, decision),
            outcome=decision["fanin"],
            deliveries=decision.get("deliveries"),
        )

    def requeue(self, messages: Any) -> None:
        """Give back messages Dramatiq fetched but never ran (a stop): not a delivery."""
        self._give_back([m.options["redis_message_id"] for m in messages])

    def _give_back(self, ids: list[str]) -> None:
        if ids:
            self.broker.iii_scripts.requeue(args=[self.broker.namespace, self.queue_name, self.broker.broker_id, *ids])

    def close(self) -> None:
        """Return fetched messages not yet handed to Dramatiq to the queue.

        They sit in this worker's in-flight set; Dramatiq requeues only what
        reached its work queue, so without this a drained worker would leave
        them for the sweep to find after its heartbeat times out.
        """
        self.broker.wake_hub.unregister(self.wake_key, self.woken)
        ids, self.cache = [rid for rid, _data, _n in self.cache], []
        try:
            self._give_back(ids)
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None

    # -- fetching -----------------------------------------------------------
    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.cache:
                    rid, data, deliveries = self.cache.pop(0)
                    if data is None:
                        # Body vanished (purged): drop the dangling id (an ack with no events).
                        self.broker.iii_scripts.ack_many(
                            args=[self.broker.namespace, self.broker.broker_id, "", self.queue_name, rid, "", ""]
                        )
                        continue
                    try:
                        message = decode_message(data)
                    except Exception as exc:  # DecodeError and anything a hostile payload triggers
                        self._quarantine(rid, data, exc)
                        continue
                    message.options["redis_message_id"] = rid
                    message.options.pop("eta", None)  # written by an older version's delay queue
                    limit = self.broker.max_deliveries(message.options.get("topic", ""))
                    if deliveries > limit:
                        self._poisoned(message, deliveries)
                        continue
                    self.queued_message_ids.add(message.message_id)
                    return Delivery(message)

                now = time.monotonic()
                if now >= self._pace_due:
                    self._pace(now)
                want = self.prefetch - self.outstanding_message_count
                if want < self.fetch_min:
                    # Near prefetch: wait for acks to free a few slots, not for a
                    # wake token (a backlog pushes none, so that would stall the
                    # drain), and fetch them in one call rather than one per ack.
                    # More than `threads` messages are still waiting locally.
                    self.slot_freed.clear()
                    if self.prefetch - self.outstanding_message_count < self.fetch_min:
                        self.slot_freed.wait(self.block_s)
                    return None
                if self._refetch_at is not None:
                    # Idle: the last fetch found nothing, and every push onto the
                    # queue drops a token, so fetch again only once woken (or as a
                    # safety net, after IDLE_REFETCH_S).
                    waiting = not self.woken.is_set() and time.monotonic() < self._refetch_at
                    if waiting and not self.woken.wait(self.block_s):
                        return None
                    self._refetch_at = None
                # Cleared before the fetch: a token landing after it wakes the wait below.
                self.woken.clear()
                flat = self.broker.iii_scripts.fetch(
                    args=[self.broker.namespace, self.queue_name, self.broker.broker_id, want, *self.higher]
                )
                if flat == -1:
                    # A higher-priority backlog goes first. The fetch left a mark
                    # on it; the fetch that drains it wakes this queue.
                    self._refetch_at = time.monotonic() + self.block_s
                    self.woken.wait(self.block_s)
                    return None
                self.cache = [(as_str(flat[i]), flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]
                if self.cache:
                    continue
                # Idle: wait for a wake token.
                self._refetch_at = time.monotonic() + IDLE_REFETCH_S
                self.woken.wait(self.block_s)
                return None
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None

    def _pace(self, now: float) -> None:
        """Set the prefetch from the pace of the last ``PACE_INTERVAL_S`` (consumer thread).

        Threads (half of Dramatiq's prefetch) plus the messages settled in
        ``PREFETCH_AHEAD_S`` at that pace, between Dramatiq's prefetch and
        ``PREFETCH_MAX_FACTOR`` times it. Idle, the pace is nil and the prefetch
        is Dramatiq's again by the next burst's first fetch.
        """
        span = now - self._pace_from
        settles, self._settles = self._settles, 0
        self._pace_from, self._pace_due = now, now + PACE_INTERVAL_S
        base = self.base_prefetch
        ahead = int(settles / span * PREFETCH_AHEAD_S) if span > 0 else 0
        self._set_prefetch(min(base * PREFETCH_MAX_FACTOR, max(base, base // 2 + ahead)))

    def _set_prefetch(self, prefetch: int) -> None:
        """Hold up to ``prefetch`` messages; fetch once a quarter of that is free (at Dramatiq's
        prefetch, half the threads), in one call rather than one per ack."""
        self.prefetch = prefetch
        self.fetch_min = max(1, prefetch // 4)

    def _poisoned(self, message: Message, deliveries: int) -> None:
        """Dead-letter, unrun, a message that keeps killing (or hanging) the workers that take it."""
        error = (
            f"delivered {deliveries} times without finishing: it crashed or hung its worker each time "
            f"(limit {deliveries - 1}, queues.<topic>.max_deliveries)"
        )
        log.error("dead-lettering %s on %s: %s", message.message_id, self.queue_name, error)
        self._dead(
            message,
            dead(
                self.broker.dead_letter_queue(message.options.get("topic", "")),
                error,
                attempts=attempts_of(message),
                fanin="dead",
                deliveries=deliveries,
            ),
        )

    def _quarantine(self, rid: str, data: bytes, exc: BaseException) -> None:
        log.error("quarantined undecodable message %s on %s: %s", rid, self.queue_name, exc)
        fake: Message[Any] = Message(
            queue_name=self.queue_name, actor_name="", args=(), kwargs={}, options={"redis_message_id": rid}
        )
        self.broker.dead_letter(self.queue_name, fake, undecodable_entry(self.queue_name, rid, data, exc))


def _higher_queues(queue_name: str) -> list[str]:
    """``t--S--low`` -> [``t--S--high``, ``t--S--normal``]; [] for high or a name we did not make."""
    try:
        topic, step, priority = parse_queue(queue_name)
    except ValueError:
        return []
    if priority not in PRIORITIES:
        return []
    sub = Subscription(topic, step)
    return [sub.queue(p) for p in PRIORITIES[: PRIORITIES.index(priority)]]
