"""Cron steps: fire each tick once across any number of scheduler processes.

Fire times come from ``core/cronexpr.py`` (APScheduler's field parser, cron's
meaning). APScheduler 3's own executor is not used: it neither tells a job which
tick it is running for nor coordinates processes. Instead each process computes
the same schedule and races for the tick with ``enqueue.lua``'s once-key
(``SET NX PX`` keyed by step, expression and scheduled time) in the same atomic step that
enqueues the cron message, so a tick is enqueued exactly once and never lost
between "won" and "enqueued". The handler then runs on a worker with the queue's
retries.

Misfires. A tick is fired if some scheduler reaches it within ``misfire_grace_ms``
of its scheduled time (late, with its drift on ``cron.fired``). A tick no
scheduler reached in time is not run: it is claimed with the same once-key as
"skipped" and reported in one ``cron.skipped`` event per batch. That covers a
scheduler that lagged (Redis away, the process stopped) and ticks missed while no
scheduler ran at all: a starting scheduler resumes after the last tick any
scheduler fired (``cron-last``), looking back at most ``lookback_ms``.

Clocks. Schedulers judge "now" by Redis's clock (their own clock plus an
offset read from ``TIME`` every few seconds), so a host whose clock is off does
not fire ticks early or late. And a tick is never fired at or before the last
tick any scheduler fired for the trigger: the enqueue script checks and moves
``cron-last`` in the same atomic step as the tick's once-key, so neither an
expired once-key nor a clock that jumps back can fire a tick twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis

from iii_console.adapters.queue.names import CRON_TOPIC, Subscription
from iii_console.adapters.queue.producer import Producer
from iii_console.core import replication
from iii_console.core.cronexpr import parse_cron
from iii_console.core.discovery import StepSet
from iii_console.core.steps import CronTrigger, Step
from iii_console.runtime.services import Services

log = logging.getLogger(__name__)

#: A tick reached later than this is reported as ``cron.skipped`` instead of fired.
MISFIRE_GRACE_MS = 60_000
#: How far back a starting (or long-stalled) scheduler looks for ticks nobody handled.
#: Only this window is accounted tick by tick; anything older is summed up by
#: ``last_fired_ms`` on the ``cron.skipped`` event.
LOOKBACK_MS = 300_000
#: How long a tick's once-marker lives: longer than the look-back plus the grace, so a
#: tick some scheduler fired is never claimed as skipped by another.
TICK_MARKER_TTL_MS = 600_000
#: How often a scheduler reads Redis's clock to correct its own.
CLOCK_SYNC_S = 5.0


class RedisClock:
    """Redis's clock, read here: the one clock every scheduler agrees on.

    Redis's ``TIME`` is read at most every ``CLOCK_SYNC_S`` (taking half the round
    trip as the one-way delay) and carried forward between reads by this host's
    monotonic clock, which a change of the host's wall clock (an NTP step, a person
    setting it) does not move: the wall clock is not read at all once Redis answered
    (carried forward by the wall clock, a step of it inside the interval moved every
    tick by as much: an hour's correction fired an hour of ticks early, then none).
    Before Redis first answers, the host's own clock (``local``) stands in.
    """

    def __init__(self, client: redis.Redis, local: Callable[[], float] = time.time):
        self.client = client
        self.local = local
        #: Redis's time minus the monotonic clock at the last read (None until Redis answers).
        self._base: float | None = None
        self._synced = float("-inf")

    def __call__(self) -> float:
        now = time.monotonic()
        if now - self._synced >= CLOCK_SYNC_S:
            try:
                m0 = time.monotonic()
                secs, micros = self.client.time()
                m1 = time.monotonic()
                self._base = (secs + micros / 1e6) - (m0 + m1) / 2
                self._synced = now
            except redis.RedisError:
                pass
        if self._base is None:
            return self.local()
        return time.monotonic() + self._base


def due_ticks(expr: str, after_ms: int, until_ms: int) -> list[int]:
    """Scheduled times (ms) in ``(after_ms, until_ms]``, at most 1001. Pure: time is passed in."""
    out: list[int] = []
    sched = parse_cron(expr)
    cur = datetime.fromtimestamp(after_ms / 1000, tz=UTC)
    while True:
        nxt = sched.next_after(cur)
        if nxt is None:
            return out
        ms = int(nxt.timestamp() * 1000)
        if ms > until_ms:
            return out
        out.append(ms)
        cur = nxt
        if len(out) > 1000:
            return out


def next_tick(expr: str, after_ms: int) -> int | None:
    nxt = parse_cron(expr).next_after(datetime.fromtimestamp(after_ms / 1000, tz=UTC))
    return int(nxt.timestamp() * 1000) if nxt else None


class Scheduler:
    def __init__(
        self,
        services: Services,
        steps: list[Step],
        producer: Producer,
        *,
        clock: Callable[[], float] | None = None,
        misfire_grace_ms: int = MISFIRE_GRACE_MS,
        lookback_ms: int = LOOKBACK_MS,
    ):
        self.services = services
        self.producer = producer
        self.clock = clock or RedisClock(services.client)
        self.misfire_grace_ms = misfire_grace_ms
        self.lookback_ms = lookback_ms
        self.jobs = [(s, t.expression) for s in steps for t in s.of(CronTrigger)]
        #: Per job: the last tick this process has dealt with (fired, lost to a peer, or
        #: skipped); ``None`` until the resume point has been read from Redis.
        self.cursors: list[int | None] = [None] * len(self.jobs)
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
        while not self._stop.is_set():
            self._stop.wait(self.run_once())

    def run_once(self) -> float:
        """Deal with every tick due by now; returns how long to sleep before the next one (s)."""
        now = self.now_ms()
        wait = 1.0
        for i, (step, expr) in enumerate(self.jobs):
            try:
                self._advance(i, step, expr, now)
                cursor = self.cursors[i]
                nxt = next_tick(expr, cursor if cursor is not None else now)
            except redis.RedisError as exc:
                log.warning("cron %s: Redis unavailable (%s); will retry the tick", step.name, exc)
                continue
            except Exception:  # one trigger's failure must not stop every other's (the loop would end)
                log.exception("cron %s (%s): this round failed; trying again at the next", step.name, expr)
                continue
            if nxt is not None:
                wait = min(wait, (nxt - self.now_ms()) / 1000)
        return max(0.001, wait)

    def _advance(self, i: int, step: Step, expr: str, now: int) -> None:
        cursor = self.cursors[i]
        if cursor is None or now - cursor > self.misfire_grace_ms:
            cursor = self.cursors[i] = self._catch_up_point(step, expr, cursor, now)
        ticks = due_ticks(expr, cursor, now)
        late = [t for t in ticks if now - t > self.misfire_grace_ms]
        if late:
            self.skip(step, expr, late, now)
            self.cursors[i] = late[-1]
        for scheduled in ticks[len(late) :]:
            self.fire(step, expr, scheduled, now)
            self.cursors[i] = scheduled

    def _catch_up_point(self, step: Step, expr: str, cursor: int | None, now: int) -> int:
        """Where to resume: after the last tick any scheduler fired, but no further back than the look-back.

        Read when this process starts and whenever it finds itself behind by more than the
        grace (stopped, or Redis was away): peers may have fired those ticks meanwhile, and
        their markers may have expired, so only ``cron-last`` still says so.
        """
        last = self.last_fired(step, expr)
        if cursor is None and last is None:
            return now  # this trigger never fired before: start from here
        known = max(c for c in (cursor, last) if c is not None)
        return min(now, max(known, now - self.lookback_ms))

    def last_fired(self, step: Step, expr: str) -> int | None:
        """The last tick any scheduler fired for this trigger (``cron-last`` is kept per expression)."""
        raw = self.services.client.get(self.services.keys.cron_last(step.name, expr))
        try:
            last = json.loads(raw) if raw else {}
        except ValueError:
            return None
        if not isinstance(last, dict):
            return None
        scheduled = last.get("scheduled_ms")
        return scheduled if isinstance(scheduled, int) else None

    def fire(self, step: Step, expr: str, scheduled_ms: int, now_ms: int | None = None) -> bool:
        """Race for one tick; returns True if this process enqueued it."""
        now = self.now_ms() if now_ms is None else now_ms
        keys = self.services.keys
        trace_id = uuid.uuid4().hex
        topic = f"{CRON_TOPIC}.{step.name}"
        last = json.dumps({"scheduled_ms": scheduled_ms, "fired_ms": now, "expression": expr}, separators=(",", ":"))
        queue = Subscription(CRON_TOPIC, step.name).queue(self.services.config.queue(topic).priority)

        def fired(ids: list[str]) -> list[Any]:  # written by the enqueue script, only if it wins the tick
            return [
                self.services.emitter.make(
                    "cron.fired",
                    step=step.name,
                    trace_id=trace_id,
                    message_id=ids[0] if ids else None,
                    topic=topic,
                    queue=queue,
                    data={"expression": expr, "scheduled_ms": scheduled_ms, "fired_ms": now, "drift_ms": now - scheduled_ms},
                )
            ]

        ids = self.producer.enqueue(
            topic,
            {"scheduled_ms": scheduled_ms, "fired_ms": now, "expression": expr},
            trace_id=trace_id,
            source="scheduler",
            once=keys.cron_tick(step.name, expr, scheduled_ms),
            once_ttl_ms=TICK_MARKER_TTL_MS,
            floor=(keys.cron_last(step.name, expr), scheduled_ms, last),
            announce=fired,
        )
        return ids is not None

    def skip(self, step: Step, expr: str, ticks: list[int], now: int) -> int:
        """Claim ``ticks`` (all past the grace) as skipped; one ``cron.skipped`` for those this process won.

        A claim is the tick's once-key, so a tick a peer fired in time is never also
        reported as skipped, and two lagging schedulers never report the same tick.
        """
        keys = self.services.keys
        fired = self.last_fired(step, expr)
        ticks = [t for t in ticks if fired is None or t > fired]  # at or before a fired tick: decided already
        if not ticks:
            return 0
        pipe = self.services.client.pipeline(transaction=False)
        for t in ticks:
            pipe.set(keys.cron_tick(step.name, expr, t), "skipped", nx=True, px=TICK_MARKER_TTL_MS)
        claimed = replication.current().execute(pipe, what=f"the skip claims of {step.name}'s cron trigger {expr}")
        won = [t for t, ok in zip(ticks, claimed) if ok]
        if won:
            self.services.emitter.emit(
                "cron.skipped",
                step=step.name,
                trace_id=uuid.uuid4().hex,
                data={
                    "expression": expr,
                    "scheduled_ms": won[0],
                    "last_scheduled_ms": won[-1],
                    "count": len(won),
                    "now_ms": now,
                    "last_fired_ms": self.last_fired(step, expr),
                    "reason": f"no scheduler reached {'it' if len(won) == 1 else 'them'} within {self.misfire_grace_ms // 1000} s",
                },
            )
        return len(won)


class CronScheduler:
    """The ``scheduler`` role: a :class:`Scheduler` for the cron triggers of the steps it is given.

    Entered, it starts one if any step has a cron trigger; :meth:`reload` stops it
    and starts one for the new steps (ticks stay exactly-once across the swap: the
    once-key and ``cron-last`` live in Redis); exited, it stops its thread.
    """

    def __init__(self, services: Services, steps: StepSet) -> None:
        self.services = services
        self.steps = steps
        self.scheduler: Scheduler | None = None

    async def __aenter__(self) -> CronScheduler:
        self._start(self.steps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def reload(self, steps: StepSet) -> None:
        await self._stop()
        self.steps = steps
        self._start(steps)

    def _start(self, steps: StepSet) -> None:
        from iii_console.runtime.runner import make_runner

        if steps.cron_steps():
            self.scheduler = Scheduler(self.services, steps.cron_steps(), make_runner(self.services, steps).producer)
            self.scheduler.start()

    async def _stop(self) -> None:
        if self.scheduler is not None:
            scheduler, self.scheduler = self.scheduler, None
            await asyncio.to_thread(scheduler.stop)
