"""Cron steps: fire each tick once across any number of scheduler processes.

Fire times come from APScheduler's cron trigger (``core/cronexpr.py``). APScheduler
3's own executor is not used: it neither tells a job which tick it is running
for nor coordinates processes. Instead each process computes the same schedule
and races for the tick with ``enqueue.lua``'s once-key (``SET NX PX`` keyed by
step and scheduled time) in the same atomic step that enqueues the cron
message, so a tick is enqueued exactly once and never lost between "won" and
"enqueued". The handler then runs on a worker with the queue's retries.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

import redis

from iii_console.adapters.queue.names import CRON_TOPIC
from iii_console.adapters.queue.producer import Producer
from iii_console.core.cronexpr import next_fire
from iii_console.core.steps import CronTrigger, Step
from iii_console.runtime.services import Services

log = logging.getLogger(__name__)

#: A tick found later than this is reported as ``cron.skipped`` instead of fired.
MISFIRE_GRACE_MS = 60_000
#: How long a tick's once-marker lives: long enough for any lagging peer.
TICK_MARKER_TTL_MS = 600_000


def due_ticks(expr: str, after_ms: int, until_ms: int) -> list[int]:
    """Scheduled times (ms) in ``(after_ms, until_ms]``. Pure: time is passed in."""
    out: list[int] = []
    cur = datetime.fromtimestamp(after_ms / 1000, tz=timezone.utc)
    while True:
        nxt = next_fire(expr, cur)
        if nxt is None:
            return out
        ms = int(nxt.timestamp() * 1000)
        if ms > until_ms:
            return out
        out.append(ms)
        cur = nxt
        if len(out) > 1000:
            return out


class Scheduler:
    def __init__(self, services: Services, steps: list[Step], producer: Producer, *, clock: Callable[[], float] = time.time):
        self.services = services
        self.producer = producer
        self.clock = clock
        self.jobs = [(s, t.expression) for s in steps for t in s.of(CronTrigger)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iii-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        last = {id(job): self.now_ms() for job in self.jobs}
        while not self._stop.is_set():
            now = self.now_ms()
            wait = 1.0
            for job in self.jobs:
                step, expr = job
                ticks = due_ticks(expr, last[id(job)], now)
                for scheduled in ticks:
                    try:
                        self.fire(step, expr, scheduled, now)
                    except redis.RedisError as exc:
                        log.warning("cron %s: Redis unavailable (%s); will retry the tick", step.name, exc)
                        break
                    last[id(job)] = scheduled
                nxt = due_ticks(expr, last[id(job)], now + 60_000)
                if nxt:
                    wait = min(wait, max(0.0, (nxt[0] - self.now_ms()) / 1000))
            self._stop.wait(max(0.001, wait))

    def fire(self, step: Step, expr: str, scheduled_ms: int, now_ms: int | None = None) -> bool:
        """Race for one tick; returns True if this process enqueued it."""
        now = self.now_ms() if now_ms is None else now_ms
        keys = self.services.keys
        trace_id = uuid.uuid4().hex
        if now - scheduled_ms > MISFIRE_GRACE_MS:
            won = self.services.client.set(keys.cron_tick(step.name, scheduled_ms), "skipped", nx=True, px=TICK_MARKER_TTL_MS)
            if won:
                self.services.emitter.emit("cron.skipped", step=step.name, trace_id=trace_id,
                                           data={"expression": expr, "scheduled_ms": scheduled_ms, "now_ms": now, "reason": "missed by more than the grace period"})
            return False
        ids = self.producer.enqueue(
            f"{CRON_TOPIC}.{step.name}", {"scheduled_ms": scheduled_ms, "fired_ms": now}, trace_id=trace_id, source="scheduler",
            once=keys.cron_tick(step.name, scheduled_ms), once_ttl_ms=TICK_MARKER_TTL_MS,
        )
        if ids is None:
            return False
        self.services.emitter.emit("cron.fired", step=step.name, trace_id=trace_id,
                                   data={"expression": expr, "scheduled_ms": scheduled_ms, "fired_ms": now, "drift_ms": now - scheduled_ms})
        self.services.client.set(keys.cron_last(step.name), f'{{"scheduled_ms":{scheduled_ms},"fired_ms":{now}}}')
        return True
