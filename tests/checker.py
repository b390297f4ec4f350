"""A Jepsen-style checker for message delivery (after RabbitMQ's).

Every message carries a key. The test step counts its executions per key and
applies its effect at most once per key, both in one Redis transaction. After
a run the checker compares what was sent with what took effect and reports
lost, unexpected and duplicated effects, duplicate executions and stuck messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from iii_console.core.keys import Keys

EFFECT_STEP = """
import redis
from iii_console import Step, queue

config = Step(name="Effect", triggers=[queue("chaos")])
_clients = {}
APPLY = \"\"\"
redis.call("HINCRBY", "chaos:executions", ARGV[1], 1)
redis.call("SADD", "chaos:running:" .. ARGV[2], ARGV[1])
if redis.call("SADD", "chaos:done", ARGV[1]) == 1 then redis.call("RPUSH", "chaos:effects", ARGV[1]) end
\"\"\"


def handler(data, ctx):
    import os
    url = data["redis"]
    r = _clients.get(url) or _clients.setdefault(url, redis.Redis.from_url(url))
    # Count the execution and apply the effect at most once per key, atomically; while it runs, the key is in
    # its process's chaos:running:<pid> set (a frozen process's set names the handlers it froze in).
    r.eval(APPLY, 0, data["key"], os.getpid())
    if data.get("work_ms"):
        import time
        time.sleep(data["work_ms"] / 1000)
    r.srem(f"chaos:running:{os.getpid()}", data["key"])
"""


@dataclass
class Report:
    sent: int
    effects: int
    lost: int
    unexpected: int
    duplicated_effects: int
    duplicate_executions: int
    stuck: int

    def table(self) -> str:
        rows = [
            (k, getattr(self, k))
            for k in ("sent", "effects", "lost", "unexpected", "duplicated_effects", "duplicate_executions", "stuck")
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(["| check | count |", "|---|---:|", *(f"| {k:<{width}} | {v} |" for k, v in rows)])


def check(client: redis.Redis, keys: Keys, sent: set[str]) -> Report:
    effects = [k.decode() for k in client.lrange("chaos:effects", 0, -1)]
    execs = {k.decode(): int(v) for k, v in client.hgetall("chaos:executions").items()}
    ns = keys.dramatiq_namespace
    stuck = 0
    for k in client.scan_iter(match=f"{ns}:chaos--*"):
        name = k.decode()
        if name.endswith((".msgs",)):
            stuck += client.hlen(k)
    effect_set = set(effects)
    return Report(
        sent=len(sent),
        effects=len(effect_set),
        lost=len(sent - effect_set),
        unexpected=len(effect_set - sent),
        duplicated_effects=len(effects) - len(effect_set),
        duplicate_executions=sum(n - 1 for n in execs.values() if n > 1),
        stuck=stuck,
    )


#: Lifecycle events, in the order of one delivery.
LIFECYCLE = (
    "message.enqueued",
    "message.started",
    "message.failed",
    "message.retrying",
    "message.redelivered",
    "message.processed",
    "message.dead_lettered",
)


@dataclass
class StreamReport:
    """Where the event stream and Redis disagree about the messages of a run (all zero when they agree)."""

    messages: int
    #: Gone from Redis (acked or dead-lettered) without a message.processed or message.dead_lettered event.
    acked_without_event: int
    #: A message.processed event while Redis still holds the message.
    processed_but_held: int
    #: More than one message.processed for one message.
    settled_twice: int
    #: Back in its queue after a start, with no message.redelivered after that start.
    requeued_without_event: int
    #: Metric counters that differ from the stream's count of that event type.
    counters_off: dict[str, tuple[int, int]]

    @property
    def ok(self) -> bool:
        return not (
            self.acked_without_event
            or self.processed_but_held
            or self.settled_twice
            or self.requeued_without_event
            or self.counters_off
        )


def check_stream(client: redis.Redis, keys: Keys, sent: set[str], topic: str = "chaos") -> StreamReport:
    """Compare, for every message sent (trace id = its key), the stream's last lifecycle event with where Redis holds it.

    Call it while nothing moves messages (every worker stopped or frozen): then a
    message Redis no longer holds must have exactly one ``message.processed``; one
    Redis holds must have none; and one waiting in its queue after a start must have
    been given back with a ``message.redelivered``. The metric counters must match
    the stream's counts.
    """
    import json

    from iii_console.core.events import Event
    from iii_console.core.metrics import read

    ns = keys.dramatiq_namespace
    held: dict[str, str] = {}  # trace id -> "waiting" / "in flight" / "delayed"
    for k in client.scan_iter(match=f"{ns}:{topic}--*.msgs"):
        queue = k.decode()[len(ns) + 1 : -len(".msgs")]
        waiting = {x.decode() for x in client.lrange(f"{ns}:{queue}", 0, -1)}
        delayed = {x.decode() for x in client.zrange(f"{ns}:{queue}.delayed", 0, -1)}
        for rid, body in client.hgetall(k).items():
            trace = json.loads(body)["options"]["trace_id"]
            rid_s = rid.decode()
            held[trace] = "waiting" if rid_s in waiting else "delayed" if rid_s in delayed else "in flight"
    life: dict[str, list[str]] = {}
    counted: dict[str, int] = {}
    for eid, fields in client.xrange(keys.events):
        ev = Event.decode(eid, fields)
        if ev.type in LIFECYCLE and ev.trace_id in sent and ev.topic == topic:
            life.setdefault(ev.trace_id, []).append(ev.type)
        if ev.type in LIFECYCLE and ev.topic == topic:
            counted[ev.type] = counted.get(ev.type, 0) + 1
    acked_without = processed_held = twice = requeued_without = 0
    for trace in sent:
        types = life.get(trace, [])
        processed = types.count("message.processed")
        twice += processed > 1
        if trace in held:
            processed_held += processed > 0
            if held[trace] == "waiting" and "message.started" in types:
                last_start = len(types) - 1 - types[::-1].index("message.started")
                requeued_without += "message.redelivered" not in types[last_start:]
        else:
            acked_without += processed == 0 and "message.dead_lettered" not in types
    counts, _ = read(client, keys)
    by_type: dict[str, int] = {}
    for (t, tp, _step), n in counts.items():
        if tp == topic and t in LIFECYCLE:
            by_type[t] = by_type.get(t, 0) + n
    off = {
        t: (by_type.get(t, 0), counted.get(t, 0)) for t in set(by_type) | set(counted) if by_type.get(t, 0) != counted.get(t, 0)
    }
    return StreamReport(len(sent), acked_without, processed_held, twice, requeued_without, off)
