"""Move delayed messages onto their queues when they fall due.

A retry waiting out its backoff and a ``delay_ms`` message wait in Redis, in
their queue's ``.delayed`` sorted set scored by their due time on Redis's
clock, with the queue indexed in ``__delayed__`` by its earliest due time. Each
worker process runs one :class:`Promoter`: it calls ``promote.lua`` (which moves
every due message in one atomic step, so promoters on any number of hosts move
each message once), then sleeps until the next one is due, or until a script
that adds a delayed message drops a token on ``__delayed__.wake``.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from iii_console.adapters.queue.scripts import Scripts
from iii_console.core.keys import Keys

log = logging.getLogger(__name__)

#: Longest sleep between two promotions: bounds how late a message is whose
#: wake token another promoter took (it may be due before what this one knew).
MAX_SLEEP_S = 1.0
#: Messages moved per script call (a backlog of due ones is moved in several).
BATCH = 1000


def delayed_index(keys: Keys) -> str:
    return keys.delayed_index


def promote_due(scripts: Scripts, keys: Keys) -> tuple[int, int]:
    """Move due delayed messages onto their queues; returns (moved, ms until the next is due or -1)."""
    moved, nxt = scripts.promote(args=[keys.dramatiq_namespace, delayed_index(keys), BATCH])
    return int(moved), int(nxt)


class Promoter:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts, stop: threading.Event):
        self.keys = keys
        self.scripts = scripts
        self.stop = stop
        # Its own connection: a BLPOP holds one for up to a second.
        self.blocking = redis.Redis(connection_pool=client.connection_pool)
        self.wake = keys.delayed_wake

    def run(self) -> None:
        while not self.stop.is_set():
            moved, nxt = promote_due(self.scripts, self.keys)
            if moved >= BATCH:
                continue
            wait = MAX_SLEEP_S if nxt < 0 else min(MAX_SLEEP_S, nxt / 1000)
            if wait >= 0.001:
                self.blocking.blpop([self.wake], timeout=wait)

    def run_forever(self) -> None:
        """:meth:`run`, carried on through Redis errors (a restart, a blip) until stopped."""
        failures = 0
        while not self.stop.is_set():
            try:
                self.run()
            except redis.RedisError as exc:
                failures += 1
                if self.stop.is_set():
                    return
                if failures == 1 or failures % 120 == 0:
                    log.warning("promoting delayed messages: Redis error: %s; retrying", exc)
                self.stop.wait(0.5)
            except Exception:
                log.exception("promoting delayed messages failed; retrying")
                time.sleep(0.5)


_MIGRATE = """
-- Move one message of an older version's delay queue (a `.DQ` list holding it
-- until due) into the delayed set of its queue. KEYS: dq list, dq bodies,
-- queue bodies, queue delayed set, index. ARGV: redis id, body without eta, eta ms, queue name.
if redis.call("LREM", KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call("HDEL", KEYS[2], ARGV[1])
redis.call("HSET", KEYS[3], ARGV[1], ARGV[2])
redis.call("ZADD", KEYS[4], ARGV[3], ARGV[1])
redis.call("ZADD", KEYS[5], "LT", ARGV[3], ARGV[4])
return 1
"""


def migrate_legacy_delay_queues(client: redis.Redis, keys: Keys) -> int:
    """Move messages waiting in an older version's ``.DQ`` delay queues into the delayed sets; returns how many.

    Those versions held delayed messages in worker memory, fetched from ``{queue}.DQ``;
    this version has no consumer for those lists, so without the move they would wait
    there for good. Run by a supervisor as it starts.
    """
    import json

    move = client.register_script(_MIGRATE)
    moved = 0
    for raw in client.scan_iter(match=keys.legacy_delay_queue("*"), count=1000):
        dq = raw.decode() if isinstance(raw, bytes) else raw
        if client.type(dq) != b"list":
            continue
        queue = dq.removeprefix(keys.queue("")).removesuffix(keys.legacy_delay_name(""))
        for rid_raw in client.lrange(dq, 0, -1):
            rid = rid_raw.decode()
            body = client.hget(keys.queue_bodies(keys.legacy_delay_name(queue)), rid)
            if body is None:
                client.lrem(dq, 1, rid)
                continue
            try:
                msg = json.loads(body)
                eta = int(msg["options"].pop("eta", 0) or 0)
                msg["queue_name"] = queue
            except (ValueError, KeyError, TypeError):
                continue  # not ours to read; left where it is
            moved += int(
                move(
                    keys=[
                        dq,
                        keys.queue_bodies(keys.legacy_delay_name(queue)),
                        keys.queue_bodies(queue),
                        keys.queue_delayed(queue),
                        keys.delayed_index,
                    ],
                    args=[rid, json.dumps(msg, separators=(",", ":")), eta, queue],
                )
            )
    return moved
