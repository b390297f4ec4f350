"""Lifecycle events through structlog into a batching Redis stream sink.

The chain is small processors (timestamp, worker id, event shaping); only the
last link does I/O, and it does not do it inline: it appends to a bounded buffer
that a background thread flushes with one script call (``lua/events_add.lua``:
the batch's ``XADD``s, one trim, the metric counters) ~20 ms after its first event.
A handler that emits never waits on Redis. If Redis is away the buffer holds events (up to ``buffer_max``; the oldest are dropped past that and
counted) and the flusher retries, so a blip leaves no gap in the console's log.

One module because the emitter, the sink and its flusher share one buffer, one lock and
one ordering rule (a settle takes its message's buffered events along).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from typing import Any

import msgspec
import redis

from iii_console.core import luasrc, metrics
from iii_console.core.errors import redis_refuses_writes
from iii_console.core.events import Event, now_ms
from iii_console.core.keys import Keys

log = logging.getLogger(__name__)

_EVENTS_ADD = resources.files("iii_console.core").joinpath("lua/events_add.lua").read_text()


_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> bytes:
    """Compact UTF-8 JSON of the sink's lists of strings and numbers (msgspec: a tenth of ``json.dumps``'s time).

    A lone surrogate (which no Redis string can hold as UTF-8) becomes ``?``
    instead of failing the write.
    """
    try:
        return _encode(value)
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


_encode_msgpack = msgspec.msgpack.Encoder().encode


def _msgpack(value: Any) -> bytes:
    """:func:`_json`'s value as MessagePack, for the scripts that read it with ``cmsgpack``: Redis's Lua
    unpacks it in four fifths of the time ``cjson`` takes for the same JSON (its strings are
    length-prefixed, not scanned). A lone surrogate becomes ``?``, as in :func:`_json`."""
    try:
        return _encode_msgpack(value)
    except UnicodeEncodeError:
        return _encode_msgpack(json.loads(_json(value)))


def _flat_tables(aggs: Sequence[Mapping[str, float]]) -> list[list[Any]]:
    """``metrics.aggregate``'s tables as the scripts take them: ``[field, n, ...]`` each, three in all."""
    out: list[list[Any]] = [[], [], []]
    for table, agg in zip(out, aggs):
        for kv in agg.items():
            table.extend(kv)
    return out


#: Errors that clear by themselves (Redis away, loading, failing over, scripts
#: flushed): the batch waits for them instead of being dropped. Full or read-only
#: is told by :func:`redis_refuses_writes`, which also knows Redis 6's wording.
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.NoScriptError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)

#: Longest an idle flusher sleeps without a wake-up (a safety net, not a poll).
IDLE_WAIT_S = 1.0
#: How long the flusher lets a burst gather after its first event. In a busy worker most
#: events go to Redis inside the settles' own calls (a settle takes what is buffered along);
#: the flusher's own calls, each with its fixed cost, write what is left. At 5 ms they were a
#: quarter of a drain's script calls; at 20 ms a tenth, for ~10 % less Redis CPU per message.
FLUSH_INTERVAL_S = 0.020
#: How long settles' processing times gather before they go to the duration histograms.
#: Each write is a dozen ``HINCRBY``s per step (cumulative buckets, sum, count), whether it
#: carries one observation or thousands: written with every few-millisecond batch, they
#: were a tenth of a drain's Redis CPU. The histograms lag by up to about this much more.
HISTOGRAM_INTERVAL_S = 1.0


class StreamSink:
    """Buffers encoded events and flushes them to one capped Redis stream in batches."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        maxlen: int = 100_000,
        flush_interval: float = FLUSH_INTERVAL_S,
        buffer_max: int = 200_000,
        keys: Keys | None = None,
    ) -> None:
        #: With ``keys``, the sink also keeps the cluster-wide metric counters.
        self._keys = keys
        self._client = client
        self._key = key
        self._maxlen = maxlen
        self._interval = flush_interval
        #: (sequence number, event), in sequence order.
        self._buf: deque[tuple[int, Event]] = deque(maxlen=buffer_max)
        self._put_lock = threading.Lock()
        #: When the oldest buffered event was put (monotonic; 0 if none or not known: due at once).
        self._oldest = 0.0
        #: Sequence number of the last event put.
        self.seq = 0
        #: Every event whose sequence number is at most this is written (or was dropped).
        self._written = 0
        #: Held while a batch is out of the buffer and being written, by the flusher
        #: or by a transition that takes the buffer along (:meth:`transition`), so
        #: batches reach Redis in the order they were put.
        self._flush_lock = threading.Lock()
        #: The processing times of settle events written by transition scripts, counted
        #: into buckets (see :meth:`transition`), that a later batch adds to the duration
        #: histograms: the first batch at or after ``_timed_due`` (``HISTOGRAM_INTERVAL_S``
        #: after the first of them), or any batch while ``flush`` waits. Guarded by ``_put_lock``.
        self._timed = metrics.Timings()
        self._timed_due = 0.0
        self._flushing = 0
        self._cond = threading.Condition()
        self._stop = False
        self.dropped = 0
        #: Consecutive failed writes (drives the retry delay); reset by a success.
        self.failures = 0
        self.total_failures = 0
        #: True while a batch is out of the buffer but not yet written (or put back).
        self._busy = False
        self._idle = False
        self._script = luasrc.register(client, _EVENTS_ADD)
        metric_keys = (keys.metrics_counts, keys.metrics_durations) if keys else (key, key)
        self._script_keys = [key, *metric_keys]
        #: Stream and counter keys handed to transition scripts ("" for no counters).
        self._event_keys = [key, *(metric_keys if keys else ("", ""))]
        self._thread = threading.Thread(target=self._run, name="iii-event-sink", daemon=True)
        self._thread.start()

    def put(self, event: Event) -> None:
        with self._put_lock:
            if not self._buf:
                self._oldest = time.monotonic()
            self.seq += 1
            if len(self._buf) == self._buf.maxlen:
                self.dropped += 1
            self._buf.append((self.seq, event))
        # Only an idle flusher needs waking; appending first and reading the flag
        # second (the flusher sets it before looking at the buffer) loses no wake-up.
        if self._idle:
            with self._cond:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                # Asleep until an event arrives (an idle process does not wake 50
                # times a second for nothing).
                self._idle = True
                if not self._buf and not self._stop:
                    self._cond.wait(self._idle_wait())
                self._idle = False
                # Then until the oldest buffered event has waited the interval: a burst goes
                # out as one batch, and in a busy process, whose settles take the buffer along
                # every few milliseconds, the flusher writes nothing at all (it used to write
                # whatever it found waiting, a call for every event or two in a drain).
                while self._buf and not self._stop and not self._flushing:
                    due = self._oldest + self._interval
                    if self._timed:
                        due = min(due, self._timed_due)
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                stopping = self._stop
            if self._buf or self._timed_ready():
                if not self._flush() and stopping:
                    log.error("event sink: stopping with %d events unwritten (Redis unavailable)", len(self._buf))
                    return
            elif stopping:
                return

    def _flush(self) -> bool:
        with self._flush_lock:
            self._busy = True
            try:
                return self._write_batch(self._take())
            finally:
                self._busy = False

    def _timed_ready(self) -> bool:
        """Whether the settles' processing times gathered so far are due to be written."""
        return bool(self._timed) and (self._flushing > 0 or time.monotonic() >= self._timed_due)

    def _idle_wait(self) -> float:
        """How long an idle flusher may sleep: until the gathered processing times are due, at most ``IDLE_WAIT_S``."""
        if not self._timed:
            return IDLE_WAIT_S
        return min(IDLE_WAIT_S, max(0.0, self._timed_due - time.monotonic()))

    def _take(self) -> list[tuple[int, Event]]:
        batch: list[tuple[int, Event]] = []
        while self._buf and len(batch) < 2000:
            batch.append(self._buf.popleft())
        # Left as it was if events remain: older than they are, so written no later.
        if not self._buf:
            self._oldest = 0.0
        return batch

    def _write_batch(self, batch: list[tuple[int, Event]]) -> bool:
        timed = metrics.Timings()
        if self._timed_ready():
            with self._put_lock:
                timed, self._timed = self._timed, timed
        if not batch and not timed:
            return True
        try:
            args = self._args([ev for _, ev in batch], timed)
        except Exception:  # an event that cannot be encoded must not stop the sink
            log.exception("event sink: dropping a batch of %d events that cannot be encoded", len(batch))
            self.dropped += len(batch)
            if batch:
                self._written = max(self._written, batch[-1][0])
            return True
        try:
            # One atomic script call: a batch and its counters land together or
            # not at all, and the client packs one argument instead of N commands.
            self._script(keys=self._script_keys, args=args)
            self.failures = 0
            if batch:
                self._written = max(self._written, batch[-1][0])
            return True
        except _TRANSIENT as exc:
            return self._retry_later(batch, exc, timed)
        except redis.ResponseError as exc:
            # Redis refuses writes for where it is (a long script running, full, read-only,
            # a failed snapshot; Redis before 7 wraps those inside our script).
            if redis_refuses_writes(exc):
                return self._retry_later(batch, exc, timed)
            # Refused for what it is (never for where Redis is): retrying would
            # block every later event behind it.
            log.error("event sink: Redis refused a batch of %d events (%s); dropped", len(batch), exc)
            self.dropped += len(batch)
            if batch:
                self._written = max(self._written, batch[-1][0])
            return True
        except redis.RedisError as exc:
            return self._retry_later(batch, exc, timed)

    def _retry_later(self, batch: list[tuple[int, Event]], exc: Exception, timed: metrics.Timings | None = None) -> bool:
        self.failures += 1
        self.total_failures += 1
        # Put the batch back in order so nothing is lost while Redis is away.
        self._buf.extendleft(reversed(batch))
        if timed:
            with self._put_lock:
                self._timed.merge(timed)
        if self.failures == 1 or self.total_failures % 100 == 0:
            log.warning("event sink: Redis unavailable (%s); %d events buffered", exc, len(self._buf))
        time.sleep(min(1.0, 0.05 * self.failures))
        return False

    # -- transitions ----------------------------------------------------------
    def transition(self, run: Callable[[bytes], Any], settle: Sequence[Event], *, through: int | None = None) -> Any:
        """Run a transition script that writes ``settle`` itself, after every event put so far.

        ``run`` gets the events argument for the script (the core's
        ``lua/_events.lua`` explains it). The transition's own events are written
        by the script only if the transition applies, so they can be neither
        lost (a crash right after it) nor wrong (a refused transition writes
        none). Events this process put before (``through``, default: all so
        far; a message's ``message.started``, its handler's logs) must reach the
        stream before them: if any are still buffered, they ride along in the
        same script call (written whatever it decides), holding the flush lock
        so no batch the flusher has taken can land after it.
        """
        return self._transition(run, lambda pre: self.payload(pre, settle), settle, through)

    def transition_many(
        self, run: Callable[[bytes], Any], settles: Sequence[Sequence[Event]], *, through: int | None = None
    ) -> Any:
        """:meth:`transition` for a script that makes several transitions, each writing its own ``settles[i]``.

        The events argument (:meth:`payload_many`) carries, instead of one
        ``s``/``st`` pair, one ``{s, c}`` per transition in ``a``; the script
        writes each one's events and adds its counters only if it applies.
        """
        return self._transition(run, lambda pre: self.payload_many(pre, settles), [e for s in settles for e in s], through)

    def _transition(
        self,
        run: Callable[[bytes], Any],
        build: Callable[[Sequence[Event]], bytes],
        settled: Sequence[Event],
        through: int | None,
    ) -> Any:
        through = self.seq if through is None else through
        if self._written < through:
            with self._flush_lock:
                self._busy = True  # a batch out of the buffer: flush() and close() wait for it
                try:
                    while self._written < through and self._buf:
                        batch = self._take()
                        if batch[-1][0] >= through or not self._buf:
                            return self._settle(run, build, settled, batch)
                        if not self._write_batch(batch):
                            raise redis.ConnectionError("event sink: Redis unavailable")
                finally:
                    self._busy = False
        # Everything it had to follow is on the stream (or was dropped): no lock needed.
        return self._settle(run, build, settled, [])

    def _settle(
        self,
        run: Callable[[bytes], Any],
        build: Callable[[Sequence[Event]], bytes],
        settled: Sequence[Event],
        batch: list[tuple[int, Event]],
    ) -> Any:
        """Run the transition with ``batch`` (taken from the buffer, flush lock held) riding along."""
        last = batch[-1][0] if batch else 0
        try:
            payload = build([ev for _, ev in batch])
        except Exception:  # an event that cannot be encoded must not block the settle
            log.exception("event sink: dropping %d events that cannot be encoded", len(batch))
            self.dropped += len(batch)
            payload, batch = build(()), []
        try:
            result = run(payload)
        except BaseException:
            self._buf.extendleft(reversed(batch))  # written by a later call, in order
            raise
        self._written = max(self._written, last)
        self._observe(settled)
        return result

    def _observe(self, settle: Sequence[Event]) -> None:
        """Count the processing times of settle events just written for the histograms (``HISTOGRAM_INTERVAL_S``)."""
        if self._keys is None or not settle:
            return
        with self._put_lock:
            first = not self._timed
            self._timed.add(settle)
            first = first and bool(self._timed)
            if first:
                self._timed_due = time.monotonic() + HISTOGRAM_INTERVAL_S
        if first and self._idle:  # an idle flusher sleeps until they are due
            with self._cond:
                self._cond.notify()

    def payload(self, pre: Sequence[Event], settle: Sequence[Event]) -> bytes:
        """The events argument of a transition script: ``pre`` always written, ``settle`` with the transition.

        A settle event's counter goes with it; its processing time does not: the
        histogram buckets (a dozen fields per observation) are added by the next
        batch the flusher writes, aggregated over many settles, so they are best
        effort on a crash, like the events that mark no move.
        """
        body = {
            "k": self._event_keys,
            "m": self._maxlen,
            "p": [ev.flat() for ev in pre],
            "pt": self._tables(pre),
            "s": [ev.flat() for ev in settle],
            "st": self._tables(settle, counts_only=True),
        }
        return _json(body)

    def payload_many(self, pre: Sequence[Event], settles: Sequence[Sequence[Event]]) -> bytes:
        """The events argument of a script making several transitions: ``pre`` always written, ``settles[i]`` with the i-th.

        Each transition's counters are a flat ``[field, n, ...]`` list (``c``); the
        script sums those of the transitions that apply and adds each field once.
        MessagePack, not JSON: this is every processed message's settle (``ack_many.lua``).
        """
        counted = self._keys is not None
        body = {
            "k": self._event_keys,
            "m": self._maxlen,
            "p": [ev.flat() for ev in pre],
            "pt": self._tables(pre),
            "a": [
                {"s": [ev.flat() for ev in settle], "c": metrics.count_fields(settle) if counted else []} for settle in settles
            ],
        }
        return _msgpack(body)

    def _args(self, batch: list[Event], timed: metrics.Timings | None = None) -> list[Any]:
        events = _json([ev.flat() for ev in batch])
        tables: list[list[Any]] = [[], [], []]
        if self._keys is not None:
            counts, buckets, sums = metrics.aggregate(batch)
            if timed:  # settles' processing times: their counts went with their transition
                more_buckets, more_sums = timed.tables()
                buckets, sums = dict(buckets), dict(sums)
                for k, n in more_buckets.items():
                    buckets[k] = buckets.get(k, 0) + n
                for k, v in more_sums.items():
                    sums[k] = sums.get(k, 0.0) + v
            tables = _flat_tables((counts, buckets, sums))
        return [self._maxlen, events, _json(tables)]

    def _tables(self, batch: Sequence[Event], *, counts_only: bool = False) -> list[list[Any]]:
        """The counter tables of ``batch`` for a script (only the counts with ``counts_only``)."""
        if self._keys is None or not batch:
            return [[], [], []]
        counts, buckets, sums = metrics.aggregate(batch)
        return _flat_tables((counts,) if counts_only else (counts, buckets, sums))

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until the buffer is written (or ``timeout``); used at shutdown and in tests."""
        deadline = time.monotonic() + timeout
        with self._put_lock:
            self._flushing += 1  # the gathered processing times go with the next batch, due or not
        try:
            while (self._buf or self._busy or self._timed) and time.monotonic() < deadline:
                with self._cond:
                    self._cond.notify()
                time.sleep(0.002)
        finally:
            with self._put_lock:
                self._flushing -= 1
        return not self._buf and not self._busy and not self._timed

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)


class Held:
    """The events one context holds back for a unit of work's script call (:meth:`Emitter.holding`)."""

    __slots__ = ("emitter", "events", "open")

    def __init__(self, emitter: Emitter):
        self.emitter = emitter
        self.events: list[Event] = []
        self.open = True


_HELD: ContextVar[Held | None] = ContextVar("iii_held_events", default=None)
#: The buffer's sequence number just after the last event this context (a thread, or a task) put: what
#: a transition it makes waits for by default (its run's start, its log lines), not every other thread's
#: events. An upper bound: another thread may have put one in between.
_LAST_PUT: ContextVar[int] = ContextVar("iii_last_put", default=0)


class _SinkLogger:
    """structlog's terminal 'logger': hands the shaped Event to the sink."""

    def __init__(self, sink: Callable[[Event], None]):
        self._sink = sink

    def msg(self, event: Event) -> None:
        self._sink(event)

    info = debug = warning = warn = error = critical = exception = msg


_EVENT_KEYS = {"trace_id", "message_id", "step", "topic", "queue", "attempt", "worker", "duration_ms", "error", "data", "ts"}


def _to_event(_logger: Any, method: str, ed: dict[str, Any]) -> Any:
    """Shape a structlog event dict into an :class:`Event`.

    ``emit("message.processed", step=...)`` arrives with ``event`` = the type.
    ``ctx.logger.info("text", k=v)`` arrives with ``_log=True`` and becomes a
    ``log`` event whose data holds the level, text and extra fields.
    """
    is_log = ed.pop("_log", False)
    known = {k: ed.pop(k) for k in list(ed) if k in _EVENT_KEYS}
    name = ed.pop("event")
    if is_log:
        extra = {k: v for k, v in ed.items()}
        data = {"level": method if method != "msg" else "info", "message": str(name), **extra}
        return (Event(type="log", data=data, **known),), {}
    if ed:
        data = known.pop("data", None)
        merged = dict(data) if isinstance(data, dict) else ({"value": data} if data is not None else {})
        merged.update(ed)
        known["data"] = merged
    return (Event(type=str(name), **known),), {}


def _stamp(_logger: Any, _method: str, ed: dict[str, Any]) -> dict[str, Any]:
    ed.setdefault("ts", now_ms())
    return ed


class Emitter:
    """Front door for lifecycle events: ``emit(type, **fields)`` and bound step loggers.

    ``trace_id`` is the process's own trace: events that belong to no request (the
    worker's start, heartbeats and stop, a reload and its step errors) carry it, so
    every event has a trace id and a process's own story can be followed like a
    message's. An event emitted with a trace id keeps that one.
    """

    def __init__(
        self,
        sink: Callable[[Event], None] | StreamSink,
        *,
        worker: str | None = None,
        trace_id: str | None = None,
        stream: StreamSink | None = None,
    ):
        # A StreamSink (or its ``put``) is also where transition scripts write: the
        # settle events of a process must go to the stream its other events go to.
        owner = sink if isinstance(sink, StreamSink) else getattr(sink, "__self__", None)
        if stream is None and isinstance(owner, StreamSink):
            stream = owner
        if isinstance(sink, StreamSink):
            sink = sink.put
        self._sink = sink
        #: The sink whose stream transition scripts write to (None: events are off or not in Redis).
        self.stream = stream
        #: The process name its events carry as ``worker``.
        self.worker = worker or ""
        self._bound = {k: v for k, v in (("worker", worker), ("trace_id", trace_id)) if v}
        #: structlog's logger for what the direct paths do not shape (built on first use: a worker whose
        #: events and step lines all take those paths never imports structlog, nor the Rich it pulls in).
        self._chain: Any = None
        #: Whether step loggers may build their lines without structlog's chain (decided on first use).
        self._plain_chain: bool | None = None

    @property
    def _logger(self) -> Any:
        logger = self._chain
        if logger is None:
            import structlog

            logger = structlog.wrap_logger(
                _SinkLogger(self._put),
                processors=[_stamp, _to_event],  # type: ignore[list-item]  # structlog types an event dict as MutableMapping
                context_class=dict,
                cache_logger_on_first_use=True,
            )
            if self._bound:
                logger = logger.bind(**self._bound)
            self._chain = logger  # two threads racing here build two equal loggers; either will do
        return logger

    def emit(self, type: str, **fields: Any) -> None:
        if fields.keys() <= _EVENT_KEYS:
            # Only event fields (a message's lifecycle): the Event structlog's chain would
            # shape, built directly, at half its cost.
            self._put(Event(type=type, **{**self._bound, "ts": now_ms(), **fields}))
            return
        self._logger.info(type, **fields)

    def _put(self, event: Event) -> None:
        """Where every event of this emitter goes: the current hold's list (:meth:`holding`), else the sink."""
        held = self.held()
        if held is not None:
            held.events.append(event)
            return
        self._sink(event)
        if self.stream is not None:
            _LAST_PUT.set(self.stream.seq)

    def put(self, *events: Event | None) -> None:
        """Send events shaped by :meth:`make` through the buffer, when no script writes them (RabbitMQ settles)."""
        for event in events:
            if event is not None:
                self._put(event)

    @contextmanager
    def holding(self, on: bool = True) -> Iterator[Held | None]:
        """Hold back the events this task emits, for a unit of work's script call to write (``runtime/uow.py``).

        While the block runs, events emitted in this context (its task, and tasks it
        starts) go to a list instead of the buffer; a unit of work's call takes them
        along and writes them before its own writes, so a request's ``http.received``
        and its handler's log lines land on the stream before the ``state.changed`` and
        ``message.enqueued`` the request caused, in one round trip. What no call took
        (no writes, a handler that raised, Redis away) goes to the buffer when the block
        ends, in order. With events off (no stream) nothing is held.
        """
        if not on or self.stream is None:
            yield None
            return
        held = Held(self)
        token = _HELD.set(held)
        try:
            yield held
        finally:
            _HELD.reset(token)
            self.release(held)

    def held(self) -> Held | None:
        """The open hold of the current context on this emitter, if any."""
        held = _HELD.get()
        return held if held is not None and held.emitter is self and held.open else None

    def release(self, held: Held, *, close: bool = True) -> None:
        """Send what ``held`` still holds to the buffer, in order; with ``close``, later events go there directly."""
        if close:
            held.open = False
        events, held.events = held.events, []
        for event in events:
            self._sink(event)
        if events and self.stream is not None:
            _LAST_PUT.set(self.stream.seq)

    def make(self, type: str, **fields: Any) -> Event:
        """The event ``emit`` would send, shaped the same way but not sent: a transition script writes it."""
        if fields.keys() <= _EVENT_KEYS:
            return Event(type=type, **{**self._bound, "ts": now_ms(), **fields})
        ed = {**self._bound, **fields, "event": type}
        (event,), _ = _to_event(None, "info", _stamp(None, "info", ed))
        return event

    def lifecycle(
        self,
        type: str,
        trace_id: str,
        message_id: str | None,
        step: str | None,
        topic: str | None,
        queue: str | None,
        attempt: int | None,
        *,
        duration_ms: float | None = None,
    ) -> Event:
        """``make(type, trace_id=..., message_id=..., ...)`` for a message's start and settle, built
        positionally: a processed message builds two, and keyword arguments cost five times as much."""
        return Event(type, now_ms(), trace_id, message_id, step, topic, queue, attempt, self._bound.get("worker"), duration_ms)

    def transition(self, run: Callable[[bytes | str], Any], *events: Event | None, through: int | None = None) -> Any:
        """Run a transition script (``run(events_arg)``) that writes ``events`` only if it applies.

        ``through``: the sequence number (:attr:`seq`) of the last buffered event that
        must be on the stream first (default: the last one this thread or task put:
        a handler's enqueue or state write follows its run's start and log lines,
        without waiting for other threads' events). With events off, the script gets
        no events to write.
        """
        if self.stream is None:
            return run("")
        self._unhold()
        return self.stream.transition(
            run, [e for e in events if e is not None], through=_LAST_PUT.get() if through is None else through
        )

    def transition_many(
        self, run: Callable[[bytes | str], Any], settles: Sequence[Sequence[Event | None]], *, through: int | None = None
    ) -> Any:
        """Run a script making several transitions, the i-th writing ``settles[i]`` only if it applies (``StreamSink.transition_many``)."""
        if self.stream is None:
            return run("")
        self._unhold()
        # Default: every event put so far (the group's leader writes for other threads' runs).
        return self.stream.transition_many(run, [[e for e in s if e is not None] for s in settles], through=through)

    def follow(self, seq: int) -> None:
        """This context's next transitions also wait for the events put up to ``seq`` (another
        context's, e.g. an ``async def`` handler's task on the loop thread, that it waited for)."""
        if seq > _LAST_PUT.get():
            _LAST_PUT.set(seq)

    def _unhold(self) -> None:
        """Before a transition script: held events go to the buffer, which the script waits for (order kept)."""
        held = self.held()
        if held is not None and held.events:
            self.release(held, close=False)

    @property
    def last_put(self) -> int:
        """The buffer's sequence number just after the last event this thread or task put (0: none yet)."""
        return _LAST_PUT.get()

    @property
    def seq(self) -> int:
        """Sequence number of the last event put to the stream (0 with events off)."""
        return self.stream.seq if self.stream is not None else 0

    def logger(self, **bound: Any) -> Any:
        """A structlog logger whose calls become ``log`` events bound to step and trace."""
        fast = self._plain_chain
        if fast is None:
            # structlog's wrapper class is fixed on first use (``cache_logger_on_first_use``): lines
            # skip its chain only if that class filters nothing (structlog's default, no level set).
            # Not imported by anyone yet: nothing configured it, so it has its default.
            structlog = sys.modules.get("structlog")
            if structlog is None:
                fast = True
            else:
                probe = self._logger.bind()
                fast = type(probe) is structlog.make_filtering_bound_logger(0)
            self._plain_chain = fast
        if fast:
            return StepLogger(self, bound)
        return self._logger.bind(_log=True, **bound)


class StepLogger:
    """``ctx.logger``: a plain line (``info("text", k=v)``) is built into its ``log`` event directly,
    as structlog's chain (``_stamp``, ``_to_event``) would shape it; anything else (``bind``,
    ``new``, ``%`` arguments, other methods) goes through a structlog logger bound the same way."""

    __slots__ = ("_emitter", "_fields")

    def __init__(self, emitter: Emitter, fields: dict[str, Any]):
        self._emitter = emitter
        self._fields = fields

    def _structlog(self) -> Any:
        return self._emitter._logger.bind(_log=True, **self._fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._structlog(), name)

    def _line(self, level: str, event: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if args or "_log" in kw:
            getattr(self._structlog(), level)(event, *args, **kw)
            return
        em = self._emitter
        ed = {**em._bound, **self._fields, **kw} if kw else {**em._bound, **self._fields}
        ts = ed.pop("ts", None)
        known: dict[str, Any] = {"ts": now_ms() if ts is None else ts}
        data: dict[str, Any] = {"level": level, "message": str(event)}
        for k, v in ed.items():
            if k in _EVENT_KEYS:
                known[k] = v
            else:
                data[k] = v
        em._put(Event(type="log", data=data, **known))

    def debug(self, event: Any, *args: Any, **kw: Any) -> None:
        self._line("debug", event, args, kw)

    def info(self, event: Any, *args: Any, **kw: Any) -> None:
        self._line("info", event, args, kw)

    def warning(self, event: Any, *args: Any, **kw: Any) -> None:
        self._line("warning", event, args, kw)

    warn = warning

    def error(self, event: Any, *args: Any, **kw: Any) -> None:
        self._line("error", event, args, kw)

    def critical(self, event: Any, *args: Any, **kw: Any) -> None:
        self._line("critical", event, args, kw)

    fatal = critical


def null_emitter() -> Emitter:
    return Emitter(lambda _e: None)
