"""The console's read side of Redis: the event stream and periodic snapshots.

Only reads, and only through the core (keys, stores, queue stats), so the
console can watch a remote deployment without running any of it. Nothing here
knows about Textual: the app runs :func:`follow_stream` and :func:`poll_snapshots`
on its worker threads, and they hand what they read to callbacks.

One module because the stream reader, the snapshot poller and their reconnect loops
share the same decoding and back-off; nothing else in the console talks to Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from iii_console.core.dlq import DeadLetter, DeadLetterStore
from iii_console.core.errors import DecodeError
from iii_console.core.events import Event, load_data
from iii_console.core.keys import Keys, as_str
from iii_console.core.queues import QueueStat, add_broker_depths, broker_delayed, broker_depths, queue_stats
from iii_console.core.redis_url import client_from_url, primary_of
from iii_console.core.state import StateStore

#: Registries (steps, topics, cron) change only on a deploy or reload: re-read this often.
REGISTRY_EVERY_S = 5.0


def connect(url: str) -> redis.Redis:
    """A client that fails fast (so the status bar says so) instead of hanging."""
    return client_from_url(url, socket_connect_timeout=1.0, socket_timeout=3.0, health_check_interval=0)


def _raw_reply(response: Any, **_: Any) -> Any:
    return response


def connect_stream(url: str) -> redis.Redis:
    """A client for :class:`StreamTail` that hands stream entries over as the parser built them.

    At thousands of events a second, redis-py's per-entry reshaping (``pairs_to_dict``,
    the RESP3-to-RESP2 conversion) and decoding bytes field by field in Python were most
    of the reader's CPU; here the parser (hiredis, when installed) decodes UTF-8 in C and
    :meth:`StreamTail._decode` pairs the flat field list itself. Undecodable bytes become
    U+FFFD rather than failing the whole read.
    """
    client = client_from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=3.0,
        health_check_interval=0,
        decode_responses=True,
        encoding_errors="replace",
    )
    for command in ("XREAD", "XREVRANGE"):
        client.set_response_callback(command, _raw_reply)
    return client


class StreamTail:
    """Reads the event stream in order from the last id it saw.

    The first read loads up to ``history`` past events; later reads block
    briefly for new ones. After a connection error the caller simply calls
    :meth:`read` again (on a new connection) and it resumes from ``last_id``,
    so a Redis blip leaves no gap.
    """

    def __init__(self, key: str, *, history: int = 2000, batch: int = 2000, block_ms: int = 250):
        self.key = key
        self.history = history
        self.batch = batch
        self.block_ms = block_ms
        self.last_id: str | None = None
        self.decode_errors = 0
        #: How many events the first read loaded from the past (``None`` until it happened).
        self.history_count: int | None = None

    def read(self, client: redis.Redis) -> list[Event]:
        if self.last_id is None:
            past = client.xrevrange(self.key, count=self.history) if self.history else []
            newest = client.xrevrange(self.key, count=1) if not past else past[:1]
            self.last_id = as_str(newest[0][0]) if newest else "0-0"
            out = self._decode(reversed(past))
            self.history_count = len(out)
            return out
        got = client.xread({self.key: self.last_id}, count=self.batch, block=self.block_ms)
        if not got:
            entries: Any = []
        elif isinstance(got, dict):  # RESP3 map, as :func:`connect_stream` leaves it
            entries = next(iter(got.values()))
        else:
            entries = got[0][1]
        if entries:
            self.last_id = as_str(entries[-1][0])
        return self._decode(entries)

    def resync(self, client: redis.Redis) -> None:
        """After an outage: if the stream came back *behind* us (a Redis without persistence
        restarted empty), read it from the start rather than wait for ids we already passed."""
        if self.last_id in (None, "0-0"):
            return
        newest = client.xrevrange(self.key, count=1)
        if not newest or _id(as_str(newest[0][0])) < _id(self.last_id):
            self.last_id = "0-0"

    def _decode(self, entries: Any) -> list[Event]:
        out: list[Event] = []
        append = out.append
        for entry_id, fields in entries:
            try:
                if isinstance(fields, list) and isinstance(entry_id, str):
                    append(_decode_flat(entry_id, fields))
                else:
                    append(Event.decode(entry_id, fields))
            except DecodeError:
                self.decode_errors += 1
        return out


#: Values repeated across events (types, steps, topics, queues, workers) are kept once, not once per event.
_INTERNED = ("type", "step", "topic", "queue", "worker")
_intern_cache: dict[str, str] = {}


def _decode_flat(entry_id: str, flat: list[Any]) -> Event:
    """:meth:`Event.decode` for an entry whose fields arrive as one flat list of str.

    The same result, about a third of the cost: no per-field bytes check, and
    repeated names shared, so the trace index holds fewer copies of the same string.
    """
    it = iter(flat)
    f = dict(zip(it, it))
    cache = _intern_cache
    for name in _INTERNED:
        v = f.get(name)
        if v is not None:
            shared = cache.get(v)
            if shared is None:
                if len(cache) > 10_000:
                    cache.clear()  # names are few; this only bounds a stream of ever-new ones
                shared = cache[v] = v
            f[name] = shared
    try:
        data = f.get("data")
        attempt = f.get("attempt")
        duration = f.get("duration_ms")
        return Event(
            type=f["type"],
            ts=int(f.get("ts", 0)),
            trace_id=f.get("trace_id", ""),
            message_id=f.get("message_id"),
            step=f.get("step"),
            topic=f.get("topic"),
            queue=f.get("queue"),
            attempt=int(attempt) if attempt is not None else None,
            worker=f.get("worker"),
            duration_ms=float(duration) if duration is not None else None,
            error=f.get("error"),
            data=load_data(data) if data is not None else None,
            id=entry_id,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise DecodeError(f"not an iii event: {entry_id!r}: {exc}") from exc


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def find_trace(client: redis.Redis, key: str, trace_id: str, *, scan: int = 50_000, chunk: int = 5000) -> list[Event]:
    """Every event of one trace still on the stream, oldest first (newest ``scan`` entries searched)."""
    out: list[Event] = []
    end = "+"
    seen = 0
    while seen < scan:
        entries = client.xrevrange(key, max=end, count=chunk)
        if not entries:
            break
        for entry_id, fields in entries:
            raw = fields.get(b"trace_id") or fields.get("trace_id")
            if raw is not None and as_str(raw) == trace_id:
                try:
                    out.append(Event.decode(entry_id, fields))
                except DecodeError:
                    pass
        seen += len(entries)
        last = as_str(entries[-1][0])
        ms, _, sq = last.partition("-")
        end = f"{ms}-{int(sq) - 1}" if int(sq) > 0 else f"{int(ms) - 1}"
        if len(entries) < chunk:
            break
    out.sort(key=lambda e: (e.ts, e.id))
    return out


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    name: str = ""
    host: str = ""
    pid: int | None = None
    queues: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    started_ms: int = 0
    heartbeat_ms: int | None = None


@dataclass(frozen=True)
class CronInfo:
    step: str
    expression: str
    last_scheduled_ms: int | None = None
    last_fired_ms: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything the console shows that is not on the event stream, as of one poll."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: tuple[WorkerInfo, ...] = ()
    queues: dict[str, QueueStat] = field(default_factory=dict)
    dlq_counts: dict[str, int] = field(default_factory=dict)
    dead_letters: tuple[DeadLetter, ...] = ()
    state_groups: dict[str, int] = field(default_factory=dict)
    state_group: str | None = None
    state_values: dict[str, Any] = field(default_factory=dict)
    cron: tuple[CronInfo, ...] = ()
    #: Where queue messages live (``redis`` or ``rabbitmq``), as the running deployment published it.
    broker: str = "redis"
    #: ``host:port`` of the Redis primary the console reads, under Sentinel (``None`` for a plain URL).
    primary: str | None = None
    #: On a broker other than Redis: messages waiting out a delay, all topics together (None: not reported).
    broker_delayed: int | None = None
    #: Which parts have been fetched at least once (a view says "loading" until then).
    loaded: frozenset[str] = frozenset()
    polls: int = 0


#: Parts a poll can fetch; the app asks for the ones its visible tab needs.
PARTS = ("registry", "workers", "queues", "dlq", "dlq_counts", "state", "cron")


def fetch(
    client: redis.Redis,
    keys: Keys,
    prev: Snapshot,
    wants: set[str],
    *,
    state_group: str | None = None,
    dlq_limit: int = 500,
    state_limit: int = 1000,
    state_recent: Sequence[str] = (),
) -> Snapshot:
    """A new snapshot with the ``wants`` parts re-read and the rest carried over from ``prev``.

    A state group is read up to ``state_limit`` keys (a group of a million keys must not
    be copied into the console every second), plus the ``state_recent`` keys, the ones
    the console saw change, so what is moving is always on screen.
    """
    upd: dict[str, Any] = {}
    if "registry" in wants:
        upd["steps"] = {as_str(k): _json(v) for k, v in client.hgetall(keys.steps_registry).items()}
        upd["strategies"] = {as_str(k): _json(v) for k, v in client.hgetall(keys.queues_registry).items()}
        upd["broker"] = as_str(client.hget(keys.deployment_registry, "broker") or b"redis")
        upd["primary"] = primary_of(client)
    steps = upd.get("steps", prev.steps)
    if "workers" in wants:
        upd["workers"] = _workers(client, keys)
    if "queues" in wants:
        topics = set(upd.get("strategies", prev.strategies)) - {"default"}
        for s in steps.values():
            for spec in s.get("trigger_specs", []):
                if spec.get("type") == "queue":
                    topics.add(spec["topic"])
        # On RabbitMQ the waiting messages are not in Redis: the deployment copies their counts here.
        depths = broker_depths(client, keys)
        upd["queues"] = add_broker_depths(queue_stats(client, keys, sorted(topics)), depths)
        upd["broker_delayed"] = broker_delayed(depths)
    if wants & {"queues", "dlq", "dlq_counts"}:
        store = DeadLetterStore(client, keys)
        upd["dlq_counts"] = {n: store.count(n) for n in store.names()}
    if "dlq" in wants:
        upd["dead_letters"] = tuple(DeadLetterStore(client, keys).list(limit=dlq_limit))
    if "state" in wants:
        store_s = StateStore(client, keys)
        groups = store_s.groups()
        pipe = client.pipeline(transaction=False)
        for g in groups:
            pipe.hlen(keys.state_group(g))
        upd["state_groups"] = dict(zip(groups, (int(n) for n in pipe.execute()))) if groups else {}
        group = state_group if state_group in upd["state_groups"] else (groups[0] if groups else None)
        upd["state_group"] = group
        values = store_s.list(group, limit=state_limit) if group else {}
        if group and group == state_group:
            values.update(store_s.get_many(group, [k for k in state_recent if k not in values]))
        upd["state_values"] = values
    if "cron" in wants:
        upd["cron"] = _cron(client, keys, steps)
    return replace(prev, **upd, loaded=prev.loaded | (wants & set(PARTS)), polls=prev.polls + 1)


def _json(raw: Any) -> dict[str, Any]:
    try:
        v = json.loads(raw)
        return v if isinstance(v, dict) else {"value": v}
    except ValueError:
        return {"error": "undecodable registry entry"}


def _workers(client: redis.Redis, keys: Keys) -> tuple[WorkerInfo, ...]:
    infos = client.hgetall(keys.workers)
    beats = {as_str(k): int(v) for k, v in client.zrange(keys.worker_heartbeats, 0, -1, withscores=True)}
    out = []
    for raw_id, raw in infos.items():
        wid = as_str(raw_id)
        d = _json(raw)
        raw_queues = d.get("queues")
        queues = raw_queues if isinstance(raw_queues, dict) else {}
        out.append(
            WorkerInfo(
                id=wid,
                name=str(d.get("name", "")),
                host=str(d.get("host", "")),
                pid=d.get("pid"),
                queues={str(k): int(v) for k, v in queues.items()},
                in_flight=int(d.get("in_flight") or 0),
                started_ms=int(d.get("started_ms") or 0),
                heartbeat_ms=beats.get(wid),
            )
        )
    out.sort(key=lambda w: (w.host, w.name, w.id))
    return tuple(out)


def cron_specs(steps: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(step, expression) for every cron trigger in the steps registry."""
    out = []
    for name, s in sorted(steps.items()):
        for spec in s.get("trigger_specs", []):
            if spec.get("type") == "cron" and spec.get("expression"):
                out.append((name, str(spec["expression"])))
    return out


def _cron(client: redis.Redis, keys: Keys, steps: dict[str, dict[str, Any]]) -> tuple[CronInfo, ...]:
    specs = cron_specs(steps)
    raws = client.mget([keys.cron_last(step, expr) for step, expr in specs]) if specs else []
    out = []
    for (step, expr), raw in zip(specs, raws):
        last = _json(raw) if raw else {}
        out.append(CronInfo(step, expr, last.get("scheduled_ms"), last.get("fired_ms")))
    return tuple(out)


@dataclass
class Link:
    """The reader's view of Redis, written by its thread and read by the render tick."""

    connected: bool | None = None  # None: not tried yet
    error: str = ""
    down_since: float = 0.0
    outages: int = 0


def short_error(exc: BaseException) -> str:
    """An error in at most 60 characters, for the status bar."""
    text = (str(exc) or type(exc).__name__).rstrip(".")
    return text if len(text) <= 60 else text[:59] + "…"


def follow_stream(
    url: str, tail: StreamTail, link: Link, stop: threading.Event, deliver: Callable[[list[Event], bool], None]
) -> None:
    """Read the event stream through ``tail`` until ``stop`` is set, reconnecting after outages.

    ``deliver(events, history)`` gets each read in order (``history``: the first read, of
    past events). ``link`` says whether Redis answers; after an outage the tail resyncs,
    so a restarted Redis with a shorter stream is read from its start, not skipped.
    """
    client: redis.Redis | None = None
    failures = 0
    try:
        while not stop.is_set():
            try:
                if client is None:
                    client = connect_stream(url)
                    if failures:
                        tail.resync(client)
                history = tail.last_id is None
                events = tail.read(client)
            except redis.RedisError as exc:
                failures += 1
                if link.connected is not False:
                    link.outages += 1
                    link.down_since = time.monotonic()
                link.error = short_error(exc)
                link.connected = False
                if client is not None:
                    client.close()
                    client = None
                stop.wait(min(2.0, 0.2 * failures))
                continue
            failures = 0
            link.connected = True
            if events:
                deliver(events, history)
    finally:
        if client is not None:
            client.close()


def poll_snapshots(
    url: str,
    keys: Keys,
    stop: threading.Event,
    poke: threading.Event,
    *,
    snap: Snapshot,
    wants: Callable[[], set[str]],
    state_group: Callable[[], str | None],
    recent_keys: Callable[[str], list[str]],
    interval: Callable[[], float],
    publish: Callable[[Snapshot], object],
    state_limit: int = 1000,
) -> None:
    """Fetch a :class:`Snapshot` of what ``wants()`` names every ``interval()`` s (or at once on ``poke``)
    until ``stop`` is set, and ``publish`` each; a Redis error skips a round and reconnects."""
    client: redis.Redis | None = None
    registry_at = 0.0
    try:
        while not stop.is_set():
            want = wants()
            if time.monotonic() - registry_at > REGISTRY_EVERY_S or "registry" not in snap.loaded:
                want.add("registry")
            try:
                if client is None:
                    client = connect(url)
                group = state_group()
                recent = recent_keys(group) if "state" in want and group else []
                snap = fetch(client, keys, snap, want, state_group=group, state_limit=state_limit, state_recent=recent)
            except redis.RedisError:
                if client is not None:
                    client.close()
                    client = None
            else:
                if "registry" in want:
                    registry_at = time.monotonic()
                publish(snap)
            poke.wait(interval())
            poke.clear()
    finally:
        if client is not None:
            client.close()
