"""What the console knows, as plain objects: no Textual, no Redis, no clock.

The reader thread hands decoded events to :meth:`ConsoleModel.ingest` in
batches; widgets read from the model when they render. Every buffer here is
bounded, so memory stays flat however fast the stream runs. Time is passed in
(``now_ms``) and rates are bucketed by each event's own timestamp, so the same
events always give the same numbers.

One module because it is one object: ``ingest`` is the single pass that keeps every view
(tiles, rates, message rows, traces, problems, cron, workers) in step under one lock, and
its parts read each other's state; split, each part would need the others back.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple

from iii_console.core.events import Event, order_key
from iii_console.tui.filter import EventFilter


class Tile(NamedTuple):
    name: str
    type: str


#: The Live tab's counters, in the order of a message's life.
TILES: tuple[Tile, ...] = (
    Tile("received", "http.received"),
    Tile("enqueued", "message.enqueued"),
    Tile("processing", "message.started"),
    Tile("processed", "message.processed"),
    Tile("failed", "message.failed"),
    Tile("retrying", "message.retrying"),
    Tile("dead-lettered", "message.dead_lettered"),
    Tile("notifications", "notification.sent"),
)
_TILE_BY_TYPE = {t.type: t.name for t in TILES}


class RateSeries:
    """A running total plus counts per second (by event time) for the last ``window`` seconds."""

    __slots__ = ("_buckets", "_newest", "total", "window")

    def __init__(self, window: int = 120):
        self.total = 0
        self.window = window
        self._buckets: dict[int, int] = {}
        self._newest = 0

    def add(self, ts_ms: int, now_ms: int, n: int = 1) -> None:
        self.total += n
        # A peer's clock running ahead must not push counts into the future.
        sec = min(ts_ms, now_ms) // 1000
        if sec <= now_ms // 1000 - self.window:
            return
        self._buckets[sec] = self._buckets.get(sec, 0) + n
        if sec > self._newest:
            self._newest = sec
            if len(self._buckets) > self.window * 2:
                floor = sec - self.window
                self._buckets = {s: c for s, c in self._buckets.items() if s > floor}

    def series(self, now_ms: int, seconds: int = 60) -> list[int]:
        """Counts for each of the last ``seconds`` whole seconds, oldest first, ending now."""
        now_s = now_ms // 1000
        return [self._buckets.get(s, 0) for s in range(now_s - seconds + 1, now_s + 1)]

    def rate(self, now_ms: int, over: int = 5) -> float:
        """Events per second over the last ``over`` complete seconds."""
        now_s = now_ms // 1000
        return sum(self._buckets.get(s, 0) for s in range(now_s - over, now_s)) / over


#: Message status after each lifecycle event, and its rank within one attempt.
#: Events from different processes can reach the stream out of order (a worker
#: may start a message before the producer's ``enqueued`` is flushed), so the
#: status follows the furthest point of the life seen, not the last event read:
#: ``(replays, attempt, rank)`` only ever moves forward.
STATUS = {
    "message.enqueued": ("queued", 0),
    "message.replayed": ("queued", 0),
    "message.started": ("running", 1),
    "message.failed": ("failed", 2),
    "message.retrying": ("retrying", 3),
    "message.processed": ("processed", 4),
    "message.dead_lettered": ("dead", 4),
    # Its worker died (or gave it up at a stop) mid-run: back in its queue, the
    # same attempt to run again. Ranked by the redelivery count (see apply).
    "message.redelivered": ("redelivered", 0),
    # Over its key's throttle: back in the delayed set, the same attempt to come.
    "message.throttled": ("throttled", 0),
}
TERMINAL = frozenset({"processed", "dead"})

#: Characters of a message's payload kept for the `/` filter: enough to find the
#: text that was sent, bounded so a row costs the same whatever the payload.
PAYLOAD_TEXT = 2048


def payload_text(payload: Any) -> str:
    """A payload as searchable text (its JSON, strings unescaped), cut to :data:`PAYLOAD_TEXT`."""
    if payload is None:
        return ""
    if isinstance(payload, str):
        return payload[:PAYLOAD_TEXT]
    try:
        text = json.dumps(payload, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = str(payload)
    return text[:PAYLOAD_TEXT]


@dataclass(slots=True)
class MessageRow:
    message_id: str
    trace_id: str = ""
    topic: str | None = None
    step: str | None = None
    queue: str | None = None
    status: str = "queued"
    attempts: int = 0
    priority: str = "normal"
    created_ms: int = 0
    updated_ms: int = 0
    duration_ms: float | None = None
    error: str | None = None
    delay_ms: int = 0
    last_type: str = ""
    #: Model sequence number of the last change, so views update only what changed.
    rev: int = 0
    replays: int = 0
    #: Times a worker holding it died (or gave it up) mid-run.
    redeliveries: int = 0
    #: The latest ``ctx.progress`` of its run: (done, total).
    progress: tuple[float, float] | None = None
    #: The throttle key it last waited on.
    throttle_key: str | None = None
    #: Times it went back to wait on its throttle (at admission, or a run that started too late).
    throttles: int = 0
    #: The start of its payload (from ``message.enqueued``), for the `/` filter's free text.
    payload: str = ""
    _status_at: tuple[int, int, int, int, int] = (-1, -1, -1, -1, -1)

    def apply(self, ev: Event, rev: int) -> None:
        self.rev = rev
        self.trace_id = self.trace_id or ev.trace_id
        self.topic = self.topic or ev.topic
        self.step = self.step or ev.step
        self.queue = ev.queue or self.queue
        if not self.created_ms or ev.ts < self.created_ms:
            self.created_ms = ev.ts
        self.updated_ms = max(self.updated_ms, ev.ts)
        d = ev.data if isinstance(ev.data, dict) else {}
        if ev.type == "message.enqueued":
            self.priority = str(d.get("priority") or self.priority)
            self.delay_ms = int(d.get("delay_ms") or 0)
        if ev.type in ("message.enqueued", "message.replayed") and "payload" in d and not self.payload:
            self.payload = payload_text(d["payload"])
        if ev.type in ("message.started", "message.failed", "message.processed") and ev.attempt:
            self.attempts = max(self.attempts, ev.attempt)
        if ev.type == "message.dead_lettered" and isinstance(d.get("attempts"), int):
            self.attempts = max(self.attempts, d["attempts"])
        if ev.duration_ms is not None and ev.type in ("message.processed", "message.failed"):
            self.duration_ms = ev.duration_ms
        if ev.error and ev.type in ("message.failed", "message.dead_lettered", "message.retrying"):
            self.error = ev.error
        if ev.type == "message.replayed":
            self.replays += 1
        if ev.type == "message.throttled":
            self.throttle_key = str(d.get("key", "")) or None
            # Its start may be on the stream already (a run that started too late, sent back): waiting comes after it.
            self.throttles += 1
        if ev.type == "message.redelivered":
            # Written by the script that put it back, after anything of the run it
            # ends: what follows (the next start) moves on from here.
            self.redeliveries += 1
        status, rank = STATUS[ev.type]
        if ev.type == "message.enqueued":
            attempt = 0
        elif ev.type == "message.retrying":
            attempt = (ev.attempt or 2) - 1  # it names the attempt to come
        elif ev.type == "message.dead_lettered" or ev.type == "message.redelivered":
            attempt = max(self.attempts, 1)
        else:
            attempt = ev.attempt or 1
        at = (self.replays, attempt, self.redeliveries, self.throttles, rank)
        if at >= self._status_at:
            self.status, self._status_at, self.last_type = status, at, ev.type


class TraceIndex:
    """Events per trace id, least recently touched evicted first.

    Bounded by traces, by events per trace, and by events in all: a few long traces
    must not hold ``max_traces × max_events`` events (every one is an object the
    garbage collector walks, and its full passes pause the UI thread).
    """

    def __init__(self, max_traces: int = 2000, max_events: int = 300, max_total: int = 20_000):
        self.max_traces = max_traces
        self.max_events = max_events
        self.max_total = max_total
        self.total = 0
        self._traces: OrderedDict[str, list[Event]] = OrderedDict()
        self._revs: dict[str, int] = {}

    def add(self, ev: Event, rev: int) -> None:
        tid = ev.trace_id
        if not tid:
            return
        events = self._traces.get(tid)
        if events is None:
            events = self._traces[tid] = []
            if len(self._traces) > self.max_traces:
                self._evict()
        else:
            self._traces.move_to_end(tid)
        if len(events) < self.max_events:
            events.append(ev)
            self.total += 1
            while self.total > self.max_total and len(self._traces) > 1:
                self._evict()
        self._revs[tid] = rev

    def _evict(self) -> None:
        old, events = self._traces.popitem(last=False)
        self.total -= len(events)
        self._revs.pop(old, None)

    def get(self, trace_id: str) -> list[Event] | None:
        events = self._traces.get(trace_id)
        return sorted(events, key=order_key) if events is not None else None

    def rev(self, trace_id: str) -> int:
        return self._revs.get(trace_id, 0)

    def find(self, prefix: str) -> str | None:
        """The most recent trace id starting with ``prefix``."""
        for tid in reversed(self._traces):
            if tid.startswith(prefix):
                return tid
        return None

    def __len__(self) -> int:
        return len(self._traces)


@dataclass(slots=True)
class TopicCounts:
    enqueued: RateSeries = field(default_factory=RateSeries)
    processed: RateSeries = field(default_factory=RateSeries)
    failed: int = 0
    retrying: int = 0
    dead: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class GroupSeen:
    """A fan-in group as the console has seen it: children enqueued, settled, and its completion."""

    total: int = 0
    settled: int = 0
    done: dict | None = None


@dataclass(slots=True)
class CronSeen:
    fired: int = 0
    skipped: int = 0
    last_drift_ms: int | None = None
    last_skip_reason: str | None = None


class LogEntry(NamedTuple):
    seq: int
    event: Event


def _recent(names: OrderedDict[str, Any], name: str, make: Any, cap: int) -> Any:
    """``names[name]``, made if new and moved to the end; past ``cap`` names the one seen longest ago goes."""
    value = names.get(name)
    if value is None:
        value = names[name] = make()
        if len(names) > cap:
            names.popitem(last=False)
    else:
        names.move_to_end(name)
    return value


class ConsoleModel:
    def __init__(
        self,
        *,
        log_size: int = 5000,
        max_messages: int = 2000,
        max_traces: int = 2000,
        max_problems: int = 200,
        max_state_keys: int = 2000,
        max_step_errors: int = 200,
        max_state_groups: int = 200,
        max_names: int = 500,
    ):
        self.seq = 0
        #: The last sequence number of history (the events read back at start,
        #: not as they happened): the log does not call those "too fast to read".
        self.history_seq = 0
        self.decode_errors = 0
        self.last_event_ms = 0
        self.log: deque[LogEntry] = deque(maxlen=log_size)
        self.tiles: dict[str, RateSeries] = {t.name: RateSeries() for t in TILES}
        self.all_events = RateSeries()
        self.in_flight = 0
        self.max_messages = max_messages
        self.messages: OrderedDict[str, MessageRow] = OrderedDict()
        self.traces = TraceIndex(max_traces)
        #: Topics, cron steps and state writers are named by the project, so few; a stream of
        #: ever-new names still keeps only the :attr:`max_names` seen most recently.
        self.max_names = max_names
        self.topics: OrderedDict[str, TopicCounts] = OrderedDict()
        self.problems: deque[LogEntry] = deque(maxlen=max_problems)
        #: Step load errors, latest per (step, file, message); a reload keeps only those it still reports.
        self.step_errors: OrderedDict[tuple[str, str, str], Event] = OrderedDict()
        self.max_step_errors = max_step_errors
        self.max_state_groups = max_state_groups
        self.max_state_keys = max_state_keys
        self.state_changes: dict[str, OrderedDict[str, int]] = {}
        self.state_rev = 0
        #: Steps seen writing each state group (state steps are triggered by those writes).
        self.state_writers: dict[str, set[str]] = {}
        self.dlq_rev = 0
        self.workers_rev = 0
        self.cron: OrderedDict[str, CronSeen] = OrderedDict()
        #: Fan-in groups by id (newest last), and the group of each child message seen.
        self.groups: OrderedDict[str, GroupSeen] = OrderedDict()
        self._child_group: OrderedDict[str, str] = OrderedDict()
        #: Recent cron firings and skips, and worker starts and stops (heartbeats are not kept).
        self.cron_events: deque[Event] = deque(maxlen=100)
        self.worker_events: deque[Event] = deque(maxlen=100)
        #: Restarts of the embedded Redis seen on the stream, and the last ``redis.*`` event.
        self.redis_restarts = 0
        self.redis_last: Event | None = None

    # -- write side ---------------------------------------------------------
    def ingest(self, events: Iterable[Event], now_ms: int, *, history: bool = False) -> None:
        for ev in events:
            self.seq += 1
            if history:
                self.history_seq = self.seq
            seq = self.seq
            self.last_event_ms = max(self.last_event_ms, ev.ts)
            self.log.append(LogEntry(seq, ev))
            self.all_events.add(ev.ts, now_ms)
            self.traces.add(ev, seq)
            t = ev.type
            tile = _TILE_BY_TYPE.get(t)
            if tile is not None:
                self.tiles[tile].add(ev.ts, now_ms)
            if t in STATUS and ev.message_id:
                self._message(ev, seq)
                self._group_child(ev)
            elif t == "progress" and ev.message_id in self.messages:
                self._progress(ev, seq)
            elif t == "group.completed" and isinstance(ev.data, dict) and ev.data.get("group_id"):
                seen = self._group(str(ev.data["group_id"]))
                seen.done = ev.data
            if t.startswith("message.") and ev.topic:
                self._topic(ev, now_ms)
            if t in ("message.failed", "message.dead_lettered", "message.redelivered", "step.error", "redis.down") or (
                t == "log" and isinstance(ev.data, dict) and ev.data.get("level") in ("error", "critical")
            ):
                self.problems.append(LogEntry(seq, ev))
            if t == "step.error":
                d = ev.data if isinstance(ev.data, dict) else {}
                err_key = (ev.step or "", str(d.get("file", "")), ev.error or "")
                self.step_errors[err_key] = ev
                if len(self.step_errors) > self.max_step_errors:
                    self.step_errors.popitem(last=False)
            elif t == "config.reloaded":
                # A failed reload comes right after the step.error events of what is still
                # broken and lists them; a good one lists none. Keep exactly those.
                d = ev.data if isinstance(ev.data, dict) else {}
                broken = set(d.get("errors") or [])
                for key in [k for k, e in self.step_errors.items() if e.error not in broken]:
                    del self.step_errors[key]
            elif t == "state.changed":
                self._state(ev)
            elif t in ("message.dead_lettered", "message.replayed"):
                self.dlq_rev += 1
            elif t in ("redis.down", "redis.restarted"):
                self.redis_last = ev
                self.redis_restarts += t == "redis.restarted"
            elif t.startswith("worker."):
                self.workers_rev += 1
                if t != "worker.heartbeat":
                    self.worker_events.append(ev)
            elif t in ("cron.fired", "cron.skipped") and ev.step:
                self.cron_events.append(ev)
                cron_seen = _recent(self.cron, ev.step, CronSeen, self.max_names)
                d = ev.data if isinstance(ev.data, dict) else {}
                if t == "cron.fired":
                    cron_seen.fired += 1
                    cron_seen.last_drift_ms = d.get("drift_ms")
                else:
                    cron_seen.skipped += d.get("count", 1)  # one event per batch of missed ticks
                    cron_seen.last_skip_reason = d.get("reason")

    def _message(self, ev: Event, seq: int) -> None:
        mid = ev.message_id
        assert mid is not None
        row = self.messages.get(mid)
        if row is None:
            row = self.messages[mid] = MessageRow(mid)
            if len(self.messages) > self.max_messages:
                _, old = self.messages.popitem(last=False)
                if old.status == "running":
                    self.in_flight -= 1
        was_running = row.status == "running"
        row.apply(ev, seq)
        self.in_flight += (row.status == "running") - was_running

    def _group(self, gid: str) -> GroupSeen:
        seen = self.groups.get(gid)
        if seen is None:
            seen = self.groups[gid] = GroupSeen()
            if len(self.groups) > 200:
                self.groups.popitem(last=False)
        return seen

    def _group_child(self, ev: Event) -> None:
        d = ev.data if isinstance(ev.data, dict) else {}
        mid = ev.message_id or ""
        if ev.type == "message.enqueued" and d.get("group_id"):
            if mid not in self._child_group:
                self._child_group[mid] = str(d["group_id"])
                if len(self._child_group) > self.max_messages * 5:
                    self._child_group.popitem(last=False)
                self._group(str(d["group_id"])).total += 1
        elif ev.type in ("message.processed", "message.dead_lettered") and mid in self._child_group:
            gid = self._child_group.pop(mid)  # settled once
            if gid in self.groups:
                self.groups[gid].settled += 1

    def _progress(self, ev: Event, seq: int) -> None:
        d = ev.data if isinstance(ev.data, dict) else {}
        done, total = d.get("done"), d.get("total")
        if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
            row = self.messages[ev.message_id or ""]
            row.progress, row.rev = (float(done), float(total)), seq

    def _topic(self, ev: Event, now_ms: int) -> None:
        tc = _recent(self.topics, ev.topic or "", TopicCounts, self.max_names)
        t = ev.type
        if t == "message.enqueued":
            tc.enqueued.add(ev.ts, now_ms)
        elif t == "message.processed":
            tc.processed.add(ev.ts, now_ms)
        elif t == "message.failed":
            tc.failed += 1
            tc.last_error = ev.error
        elif t == "message.retrying":
            tc.retrying += 1
        elif t == "message.dead_lettered":
            tc.dead += 1

    def _state(self, ev: Event) -> None:
        d = ev.data if isinstance(ev.data, dict) else {}
        group, key = d.get("group"), d.get("key")
        if not isinstance(group, str) or not isinstance(key, str):
            return
        if ev.step:
            writers = self.state_writers.setdefault(group, set())
            if len(writers) < self.max_names:
                writers.add(ev.step)
        changes = self.state_changes.get(group)
        if changes is None:
            changes = self.state_changes[group] = OrderedDict()
            if len(self.state_changes) > self.max_state_groups:
                quiet = min(
                    (g for g in self.state_changes if g != group), key=lambda g: next(reversed(self.state_changes[g].values()), 0)
                )
                del self.state_changes[quiet]
                self.state_writers.pop(quiet, None)
        changes.pop(key, None)
        changes[key] = ev.ts
        if len(changes) > self.max_state_keys:
            changes.popitem(last=False)
        self.state_rev += 1

    # -- read side ----------------------------------------------------------
    def log_since(self, seq: int) -> list[LogEntry]:
        """Log entries after ``seq`` that are still buffered, oldest first."""
        if not self.log or seq >= self.log[-1].seq:
            return []
        first = self.log[0].seq
        start = max(0, seq + 1 - first)
        out = list(islice(reversed(self.log), len(self.log) - start))  # from the end: a deque indexes in O(n)
        out.reverse()
        return out

    def log_tail(self, flt: EventFilter, limit: int) -> list[LogEntry]:
        """The last ``limit`` buffered entries matching ``flt``, oldest first."""
        out: list[LogEntry] = []
        for entry in reversed(self.log):
            if not flt or flt.matches(entry.event):
                out.append(entry)
                if len(out) >= limit:
                    break
        out.reverse()
        return out

    def message_rows(self, flt: EventFilter | None = None, limit: int = 500) -> list[MessageRow]:
        """Newest first."""
        out: list[MessageRow] = []
        for row in reversed(self.messages.values()):
            if flt and not flt.matches_values(
                type=row.last_type,
                topic=row.topic,
                step=row.step,
                trace=row.trace_id,
                status=row.status,
                text=(row.message_id, row.error, row.priority, row.payload),
            ):
                continue
            out.append(row)
            if len(out) >= limit:
                break
        return out

    def throttled(self) -> dict[str, dict[str, int]]:
        """topic -> throttle key -> messages waiting on it (their last event was ``message.throttled``)."""
        out: dict[str, dict[str, int]] = {}
        for row in self.messages.values():
            if row.status == "throttled":
                keys = out.setdefault(row.topic or "", {})
                keys[row.throttle_key or "?"] = keys.get(row.throttle_key or "?", 0) + 1
        return out

    def iter_problems(self) -> Iterator[Event]:
        return (e.event for e in self.problems)

    def state_recent(self, group: str) -> dict[str, int]:
        return dict(self.state_changes.get(group, {}))
