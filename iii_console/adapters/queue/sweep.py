"""Recover the messages of workers that are gone.

A worker is dead when its last heartbeat (written with Redis's clock) is older
than ``heartbeat_timeout``. Every live worker and the supervisor sweep on a
timer, so recovery does not wait for a restarted worker to boot; a supervisor
also recovers a child of its own the moment it sees it exit without its clean
stop (:func:`recover_worker`), without waiting for the heartbeat to age.
Recovery is idempotent (``requeue_dead.lua`` empties the in-flight set as it
requeues, writing one ``message.redelivered`` per message it returns), so
concurrent sweepers cannot duplicate a message or its event.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from iii_console.adapters.queue.scripts import Scripts
from iii_console.core.config import WorkersConfig
from iii_console.core.emitter import Emitter
from iii_console.core.keys import Keys, as_str


def worker_name(client: redis.Redis, keys: Keys, worker_id: str) -> str:
    """The process name a worker registered (what its events carry as ``worker``), or ""."""
    try:
        info = json.loads(client.hget(keys.workers, worker_id) or b"{}")
    except ValueError:
        return ""
    return str(info.get("name") or "") if isinstance(info, dict) else ""


def requeue_worker(
    client: redis.Redis,
    keys: Keys,
    scripts: Scripts,
    emitter: Emitter,
    worker_id: str,
    *,
    reason: str,
    by: str = "",
    name: str | None = None,
) -> int:
    """Return every message ``worker_id`` holds to the head of its queue; returns how many.

    The worker must be gone (or be the caller, giving up handlers it abandons):
    nothing checks that it is not still running them.
    """
    ns = keys.dramatiq_namespace
    prefix = keys.in_flight(worker_id)
    if name is None:
        name = worker_name(client, keys, worker_id)
    stream = emitter.stream
    events: Any = stream.payload((), ()) if stream is not None else ""
    n = 0
    for key in client.scan_iter(match=prefix + "*", count=1000):
        queue = as_str(key)[len(prefix) :]
        n += int(scripts.requeue_dead(args=[ns, queue, worker_id, reason, by or emitter.worker, events, name]))
    return n


def forget_worker(client: redis.Redis, keys: Keys, worker_id: str) -> bool:
    """Remove a gone worker's heartbeat and registry entry; True if this call removed the heartbeat."""
    removed = bool(client.zrem(keys.worker_heartbeats, worker_id))
    client.hdel(keys.workers, worker_id)
    return removed


def reclaim_worker(
    client: redis.Redis,
    keys: Keys,
    scripts: Scripts,
    emitter: Emitter,
    worker_id: str,
    *,
    reason: str,
    report_once: bool = False,
    **event: Any,
) -> int:
    """Give back everything a gone worker held, forget it, and say so in ``worker.stopped``.

    With ``report_once`` (sweepers racing for the same dead worker) only the one
    that removed its heartbeat reports it.
    """
    name = worker_name(client, keys, worker_id)
    n = requeue_worker(client, keys, scripts, emitter, worker_id, reason=reason, name=name)
    if forget_worker(client, keys, worker_id) or not report_once:
        emitter.emit(
            "worker.stopped", data={"id": worker_id, **({"name": name} if name else {}), "reason": reason, "requeued": n, **event}
        )
    return n


def recover_worker(client: redis.Redis, keys: Keys, scripts: Scripts, emitter: Emitter, worker_id: str, **event: Any) -> int:
    """A supervisor's child exited without its clean stop: give its messages back now and say so."""
    return reclaim_worker(client, keys, scripts, emitter, worker_id, **{"reason": "crashed", **event})


def sweep_dead_workers(
    client: redis.Redis,
    keys: Keys,
    scripts: Scripts,
    emitter: Emitter,
    *,
    workers: WorkersConfig,
    self_id: str | None = None,
) -> int:
    """Requeue the in-flight messages of every worker silent past ``workers.heartbeat_timeout``; returns how many.

    Sweeps come every ``workers.sweep_interval`` from each process; time Redis spent not answering
    (paused, stalled) counts against no worker's heartbeat (``lua/sweep.lua``).
    """
    moved = 0
    args = [keys.worker_heartbeats, int(workers.heartbeat_timeout * 1000), keys.sweep_clock, int(workers.sweep_interval * 1000)]
    for raw in scripts.sweep(args=args):
        dead = as_str(raw)
        if dead != self_id:
            moved += reclaim_worker(client, keys, scripts, emitter, dead, reason="heartbeat lost", report_once=True)
    return moved
