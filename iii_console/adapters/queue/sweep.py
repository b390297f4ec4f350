"""Recover dead workers' in-flight messages.

A worker is dead when its last heartbeat (written with Redis's clock) is older
than ``heartbeat_timeout``. Every live worker and the supervisor sweep on a
timer, so recovery does not wait for a restarted worker to boot; sweeping is
idempotent (``requeue_dead.lua`` empties the in-flight set as it requeues), so
concurrent sweepers cannot duplicate a message.
"""

from __future__ import annotations

import redis

from iii_console.adapters.queue.scripts import Scripts
from iii_console.core.emitter import Emitter
from iii_console.core.keys import Keys


def sweep_dead_workers(client: redis.Redis, keys: Keys, scripts: Scripts, emitter: Emitter, *, timeout_ms: int,
                       self_id: str | None = None) -> int:
    """Requeue every dead worker's in-flight messages; returns how many."""
    ns = keys.dramatiq_namespace
    moved = 0
    for raw in scripts.sweep(args=[keys.worker_heartbeats, timeout_ms]):
        dead = raw.decode() if isinstance(raw, bytes) else raw
        if dead == self_id:
            continue
        prefix = f"{ns}:__acks__.{dead}."
        n = 0
        for key in client.scan_iter(match=prefix + "*", count=1000):
            queue = (key.decode() if isinstance(key, bytes) else key)[len(prefix):]
            n += int(scripts.requeue_dead(args=[ns, queue, dead]))
        removed = client.zrem(keys.worker_heartbeats, dead)
        client.hdel(keys.workers, dead)
        moved += n
        if removed:  # one report per dead worker, however many sweepers saw it
            emitter.emit("worker.stopped", data={"id": dead, "reason": "heartbeat lost", "requeued": n})
    return moved
