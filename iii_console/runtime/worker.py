"""A queue worker process: Dramatiq workers for every subscription, plus the
background duties that make the cluster self-healing.

Per process:
- one Dramatiq ``Worker`` per topic, with ``min(concurrency, threads)`` threads,
  so each queue's ``concurrency`` holds in this process regardless of others;
- a heartbeat (Redis clock) and a registry entry the console reads;
- a sweep that returns dead workers' in-flight messages to their queues;
- a promoter that moves due delayed messages (retries, ``delay_ms``) onto their queues;
- the state-trigger dispatcher (``dispatcher.py``), reading state changes through a consumer group.

One module because the duties above start and stop together, in an order the process's
stop depends on (intake closed, handlers drained, heartbeat last).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from contextlib import ExitStack
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

from iii_console.adapters.queue.middleware import LifecycleEvents, RetryPolicy
from iii_console.adapters.queue.names import ACTOR_PRIORITY, CRON_TOPIC, STATE_TOPIC, Subscription, parse_queue
from iii_console.adapters.queue.sweep import requeue_worker, sweep_dead_workers
from iii_console.adapters.queue.throttle import Throttle
from iii_console.adapters.queue.timelimit import TimeLimits
from iii_console.core.config import Config
from iii_console.core.context import CronTick, StateChange
from iii_console.core.discovery import StepSet, discover
from iii_console.core.events import now_ms
from iii_console.core.steps import PRIORITIES, QueueTrigger, StateTrigger, Step, validate_input
from iii_console.runtime import hangup, unawaited
from iii_console.runtime.batch import batched_actor
from iii_console.runtime.brokers import make_broker
from iii_console.runtime.dispatcher import (
    TRIGGER_GROUP,
    TriggerDispatcher,
    ensure_trigger_group,
    trim_dispatched_changes,
    watch_state_triggers,
)
from iii_console.runtime.hardstop import HardStop
from iii_console.runtime.recycling import Recycler, report_stuck, stop_intake
from iii_console.runtime.redis_watchdog import wait_for_redis
from iii_console.runtime.runner import LoopThread, make_runner
from iii_console.runtime.services import open_services

log = logging.getLogger(__name__)
#: How long a stop waits for the async handlers' clients to close.
ASYNC_CLOSE_S = 2.0
#: How long a stop waits for the acks its handlers handed over to be committed (Redis broker).
ACKS_CLOSE_S = 5.0
#: How long past ``shutdown_timeout`` a stop waits for a topic's Dramatiq worker to stop (its consumers
#: stop, give back what they prefetched and close) before going on without it.
STOP_MARGIN_S = 3.0

__all__ = ["TRIGGER_GROUP", "WorkerRuntime", "ensure_trigger_group", "trim_dispatched_changes", "watch_state_triggers"]


class WorkerRuntime:
    def __init__(self, config: Config, steps: StepSet, *, threads: int | None = None, index: int = 0):
        self.config = config
        self.steps = steps
        self.threads = threads or config.workers.threads
        self.index = index
        self.services = open_services(config, f"worker{index}", traced=True)
        self.loop_thread = LoopThread()
        self.runner = make_runner(self.services, steps, loop_thread=self.loop_thread)
        self.events = LifecycleEvents(self.services.emitter)
        # Supervision: when this process asks to be replaced, and the handlers' time limits.
        self.recycler = Recycler(
            max_messages=config.workers.max_messages_per_process,
            max_memory_mb=config.workers.max_memory_mb,
            on_request=lambda: stop_intake(self.workers.values()),
        )
        self.time_limits = TimeLimits(
            lambda topic: (config.queue(topic).soft_time_limit_ms, config.queue(topic).time_limit_ms),
            lambda run: report_stuck(run, self.time_limits, self.recycler, self.services.emitter),
        )
        self.throttle = Throttle(config, self.services.emitter)
        middleware = [
            CurrentMessage(),
            RetryPolicy(config, self.services.emitter),
            self.throttle,
            self.events,
            self.recycler,
        ]
        if self.services.tracing is not None:
            from iii_console.adapters.telemetry.queue import CloseRun, OpenRun

            # Opens once the throttle let the message through; closes after the retry policy decided.
            middleware = [CloseRun(), *middleware[:3], OpenRun(self.services.tracing), *middleware[3:]]
        self.broker = make_broker(config, self.services, self.runner._subs, middleware)
        # The supervisor names its child, so it can recover the child's messages
        # the moment it exits without its clean stop.
        if os.environ.get("III_WORKER_ID"):
            self.broker.broker_id = os.environ["III_WORKER_ID"]
        #: Enqueues the state steps whose triggers a state change matches (started by ``start``).
        self.dispatcher = TriggerDispatcher(
            self.services, self.runner.producer, steps, consumer=self.worker_id, guard=self._guard
        )
        #: The roles this process enters at ``start`` and leaves at ``stop`` (its dispatcher).
        self._roles = ExitStack()
        self.workers: dict[str, dramatiq.Worker] = {}
        self._stop = threading.Event()
        #: Set only once the last handler returned (or was abandoned): a draining
        #: worker keeps heartbeating, or it would be swept while its handlers run.
        self._hb_stop = threading.Event()
        #: Messages this process gave up at its last stop (handlers still running at the timeout).
        self.abandoned = 0
        self._threads: list[threading.Thread] = []
        #: Where each dead-letter queue's expiry goes on at the next sweep (``dlq.expire``).
        self._dlq_cursor: dict[str, int] = {}
        #: Whether the process that started this one has died (set by ``main``).
        self.orphaned: Any = lambda: False
        self.started_ms = now_ms()

    @property
    def worker_id(self) -> str:
        return self.broker.broker_id

    # -- actors -------------------------------------------------------------
    def _subscriptions(self) -> dict[str, list[tuple[Subscription, Step]]]:
        """topic (the key for queue config and concurrency) -> its subscriptions."""
        out: dict[str, list[tuple[Subscription, Step]]] = {}
        for step in self.steps.steps:
            for t in step.topics:
                out.setdefault(t, []).append((Subscription(t, step.name), step))
            if step.of(StateTrigger):
                out.setdefault(f"{STATE_TOPIC}.{step.name}", []).append((Subscription(STATE_TOPIC, step.name), step))
            if step.cron_like():
                out.setdefault(f"{CRON_TOPIC}.{step.name}", []).append((Subscription(CRON_TOPIC, step.name), step))
        return out

    def _batch_spec(self, step: Step, topic: str) -> Any:
        return next((t.batch for t in step.of(QueueTrigger) if t.topic == topic and t.batch is not None), None)

    def _actor_fn(self, step: Step, sub: Subscription) -> Any:
        runner = self.runner
        trigger = step.of(QueueTrigger)
        schema = next((t.input_schema for t in trigger if t.topic == sub.topic), None)
        spec = self._batch_spec(step, sub.topic)
        if spec is not None:

            def limit(fn: Any, meta: dict[str, Any]) -> None:
                self.time_limits.call(
                    fn,
                    topic=sub.topic,
                    message_id=meta["message_id"] or "",
                    queue=meta["queue"],
                    redis_message_id=meta["redis_message_id"],
                    attempt=meta["attempt"],
                    trace_id=meta["trace_id"],
                )

            return batched_actor(
                runner, step, sub.topic, schema, spec, max_attempts=self.config.queue(sub.topic).max_retries + 1, limit=limit
            )

        def run(data: Any) -> None:
            msg = CurrentMessage.get_current_message()
            opts = msg.options if msg else {}
            if sub.topic == CRON_TOPIC:
                value: Any = CronTick(
                    scheduled_ms=data["scheduled_ms"], fired_ms=data["fired_ms"], manual=bool(data.get("manual"))
                )
                trig = {"type": "cron", **data}  # with the expression, which tells a step's cron triggers apart
            elif sub.topic == STATE_TOPIC:
                value = StateChange(**data)
                trig = {"type": "state", "group": data["group"], "key": data["key"]}
            else:
                value = validate_input(schema, data)
                trig = {"type": "queue", "topic": sub.topic, "priority": parse_queue(msg.queue_name)[2] if msg else "normal"}

            if msg is not None:
                # Admitted well before now: the window counts from here. Outside the time limit: its wait for
                # Redis is not the handler's time (a Redis that answers late would spend the attempts).
                self.throttle.starting(self.broker, msg)

            def call() -> None:
                runner.call_sync(
                    step,
                    value,
                    trace_id=opts.get("trace_id", ""),
                    attempt=opts.get("retries", 0) + 1,
                    trigger=trig,
                    message_id=msg.message_id if msg else None,
                    max_attempts=self.config.queue(opts.get("topic", "")).max_retries + 1,
                )

            self.time_limits.call(
                call,
                topic=opts.get("topic", ""),
                message_id=msg.message_id if msg else "",
                queue=msg.queue_name if msg else "",
                redis_message_id=opts.get("redis_message_id", ""),
                attempt=opts.get("retries", 0) + 1,
                trace_id=opts.get("trace_id", ""),
            )

        run.__name__ = f"{step.name}_{sub.topic}"
        return run

    def declare(self) -> None:
        for topic, subs in self._subscriptions().items():
            queues: set[str] = set()
            for sub, step in subs:
                fn = self._actor_fn(step, sub)
                for p in PRIORITIES:
                    dramatiq.Actor(
                        fn,
                        broker=self.broker,
                        actor_name=sub.actor(p),
                        queue_name=sub.queue(p),
                        priority=ACTOR_PRIORITY[p],
                        options={},
                    )
                    queues.add(sub.queue(p))
            conc = min(self.config.queue(topic).concurrency, self.threads)
            # A batch of N holds N threads while it gathers: give a batched topic at least that many.
            sizes = [spec.max_size for sub, step in subs if (spec := self._batch_spec(step, sub.topic)) is not None]
            conc = max([conc, *sizes])
            self.workers[topic] = dramatiq.Worker(self.broker, queues=queues, worker_threads=conc, worker_timeout=200)

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        logging.getLogger("dramatiq.broker").setLevel(logging.ERROR)  # one Worker per topic shares the broker
        # Handler failures reach the console as message.failed events with their traceback.
        logging.getLogger("dramatiq.worker.WorkerThread").setLevel(logging.CRITICAL)
        unawaited.install_for(self.services.emitter.emit, self.config, self.steps)
        self.declare()
        wait_for_redis(self.heartbeat, stop=self.recycler.requested, orphaned=self.orphaned)
        for w in self.workers.values():
            w.start()
        self._hb_thread = threading.Thread(
            target=self._guard(self._heartbeat_loop, self._hb_stop), name="iii-heartbeat", daemon=True
        )
        self._hb_thread.start()
        self._spawn(self._sweep_loop, "iii-sweep")
        if self.steps.state_steps():
            wait_for_redis(
                lambda: watch_state_triggers(self.services.client, self.services.keys, self.steps),
                stop=self.recycler.requested,
                orphaned=self.orphaned,
            )
        self._roles.enter_context(self.dispatcher)
        self.services.emitter.emit("worker.started", data=self.info())
        if self.recycler.max_memory_mb and self.recycler.rss_at_start_mb > self.recycler.max_memory_mb:
            self.services.emitter.emit(
                "log",
                data={
                    "level": "warning",
                    "message": (
                        f"worker process starts at {self.recycler.rss_at_start_mb:.0f} MiB, above workers.max_memory_mb "
                        f"({self.recycler.max_memory_mb}): it will be replaced after every message"
                    ),
                },
            )

    def stop(self, timeout_s: float | None = None) -> None:
        """Drain: running handlers finish, prefetched messages go back to their queues.

        The heartbeat goes on until the last handler has returned, so a long
        drain is not mistaken for a dead worker. A handler still running when
        ``shutdown_timeout`` ends is abandoned: its message goes back to the
        head of its queue (a ``message.redelivered``, counted as a delivery,
        since the handler did start) and the stop says so on stderr and in its
        ``worker.stopped`` event.
        """
        timeout_ms = int((timeout_s or self.config.workers.shutdown_timeout) * 1000)
        self._stop.set()
        stuck = self.time_limits.detach_stuck(self.workers.values())
        # Each topic's Worker drains independently; stop them side by side. A Worker's stop waits up to
        # the timeout for its handlers, then for its consumers; past that (plus a margin for the
        # consumers' requeue and close) the stop goes on without it and says where it was.
        stoppers = {
            topic: threading.Thread(target=w.stop, kwargs={"timeout": timeout_ms}, name=f"iii-stop-{topic}", daemon=True)
            for topic, w in self.workers.items()
        }
        for t in stoppers.values():
            t.start()
        deadline = time.monotonic() + timeout_ms / 1000 + STOP_MARGIN_S
        for t in stoppers.values():
            t.join(max(0.0, deadline - time.monotonic()))
        hung = [topic for topic, t in stoppers.items() if t.is_alive()]
        if hung:
            self._leave_behind(hung, stoppers, timeout_ms / 1000 + STOP_MARGIN_S)
        for t in self._threads:
            t.join(5)
        # Acks the handlers handed over are committed before anything this worker holds is given back.
        settle = getattr(self.broker, "settle_handed_over", None)
        settled = settle(ACKS_CLOSE_S) if settle is not None else True
        self._roles.close()
        running = [t for w in self.workers.values() for t in w.workers if t.is_alive()]
        data: dict[str, Any] = {"id": self.worker_id, "name": self.services.name, **self.recycler.stop_data()}
        returned = True
        if running or stuck or hung or not settled:
            # Everything this worker still holds belongs to a handler that is
            # still running (one past its time limit and stuck in C code, or
            # one the shutdown timeout ran out on), to a consumer whose stop
            # did not end, or to a handler whose ack could not be committed
            # (Redis away): it runs again.
            reason = (
                "abandoned at shutdown"
                if running or hung
                else "stuck past its time limit"
                if stuck
                else "not settled at shutdown"
            )
            gave_back = self._give_up_running(reason)
            # A consumer whose stop did not end may still be inside a fetch: the heartbeat entry stays
            # then, so the sweep also returns what that fetch brings in after this.
            returned = gave_back is not None and not hung
            self.abandoned = gave_back or 0
            data["abandoned"] = self.abandoned
            if running:
                print(
                    f"iii-console worker {self.services.name}: {len(running)} handler(s) still running after "
                    f"shutdown_timeout ({timeout_ms / 1000:g} s); {self.abandoned} message(s) returned to their queues "
                    "to run again",
                    file=sys.stderr,
                    flush=True,
                )
            elif not settled and gave_back is not None:
                print(
                    f"iii-console worker {self.services.name}: Redis did not take the acks of some processed messages "
                    f"before the stop; {self.abandoned} message(s) returned to their queues to run again",
                    file=sys.stderr,
                    flush=True,
                )
        self.time_limits.close()
        self._hb_stop.set()
        self._hb_thread.join(5)
        try:
            if returned:  # else the heartbeat stays: the sweep finds this worker dead and requeues what it held
                self.services.client.zrem(self.services.keys.worker_heartbeats, self.worker_id)
                self.services.client.hdel(self.services.keys.workers, self.worker_id)
        except redis.RedisError:
            pass
        self.services.emitter.emit("worker.stopped", data=data)
        self.broker.close()
        self._close_async_clients()
        self.loop_thread.stop()
        self.services.close()

    def _close_async_clients(self) -> None:
        """Close the async clients the runner built on the loop thread (async handlers' ``ctx``)."""
        # Bounded from here, not on the loop: a handler stuck past its time limit may
        # hold the loop, and a stop must never wait on it.
        closing = asyncio.run_coroutine_threadsafe(self.runner.aclose(), self.loop_thread.loop)
        try:
            closing.result(ASYNC_CLOSE_S)
        except Exception as exc:  # a stop must go on: the process is about to exit anyway
            closing.cancel()
            log.warning("closing the async clients failed: %r", exc)

    def _leave_behind(self, hung: list[str], stoppers: dict[str, threading.Thread], waited_s: float) -> None:
        """Go on without the topics whose stops did not end: say on stderr where their threads are, and stop
        those threads taking more, as Dramatiq's stop does first."""
        frames = sys._current_frames()
        threads = [stoppers[topic] for topic in hung]
        for topic in hung:
            w = self.workers[topic]
            threads += [t for t in [*w.workers, *w.consumers.values()] if t.is_alive()]
            for handler_thread in w.workers:
                handler_thread.stop()
            for consumer in w.consumers.values():
                consumer.stop()
        where = []
        for t in threads:
            frame = frames.get(t.ident) if t.ident is not None else None
            stack = "".join(traceback.format_stack(frame)[-4:]) if frame is not None else "  (no frame)\n"
            where.append(f"  thread {t.name}:\n{stack}")
        print(
            f"iii-console worker {self.services.name}: the stop of {', '.join(hung)} did not end within "
            f"{waited_s:g} s; going on without it. Where its threads were:\n{''.join(where)}",
            file=sys.stderr,
            flush=True,
        )

    def _give_up_running(self, reason: str) -> int | None:
        """Return the messages of handlers still running at the end of the stop to their queues.

        ``None`` if Redis refused for 10 s: the heartbeat entry then stays, so the
        sweep finds this worker dead and returns them.
        """
        for _ in range(50):
            try:
                return requeue_worker(
                    self.services.client,
                    self.services.keys,
                    self.broker.iii_scripts,
                    self.services.emitter,
                    self.worker_id,
                    reason=reason,
                )
            except redis.RedisError as exc:
                log.warning("returning abandoned messages: Redis error: %s; retrying", exc)
                time.sleep(0.2)
        return None

    def _spawn(self, fn: Any, name: str) -> None:
        t = threading.Thread(target=self._guard(fn), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _guard(self, fn: Any, stop: threading.Event | None = None) -> Any:
        stop = stop or self._stop

        def run() -> None:
            while not stop.is_set():
                try:
                    fn()
                    return
                except redis.RedisError as exc:
                    log.warning("%s: Redis error: %s; retrying", fn.__name__, exc)
                except Exception:
                    log.exception("%s crashed; restarting it", fn.__name__)
                stop.wait(1.0)

        return run

    def info(self) -> dict[str, Any]:
        return {
            "id": self.worker_id,
            "name": self.services.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": {t: w.worker_threads for t, w in self.workers.items()},
            "in_flight": len(self.events._started),
            "started_ms": self.started_ms,
        }

    def heartbeat(self) -> None:
        k = self.services.keys
        self.broker.iii_scripts.heartbeat(args=[k.worker_heartbeats, k.workers, self.worker_id, json.dumps(self.info())])

    def _heartbeat_loop(self) -> None:
        n = 0
        interval = self.config.workers.heartbeat_interval
        while not self._hb_stop.wait(interval):
            self.heartbeat()
            n += 1
            if n % max(1, int(10 / interval)) == 0:
                self.services.emitter.emit("worker.heartbeat", data=self.info())

    # -- sweep --------------------------------------------------------------
    def sweep_once(self) -> int:
        """Return dead workers' in-flight messages to their queues; returns how many."""
        moved = sweep_dead_workers(
            self.services.client,
            self.services.keys,
            self.broker.iii_scripts,
            self.services.emitter,
            workers=self.config.workers,
            self_id=self.worker_id,
        )
        moved += self.dispatcher.claim_stale(int(self.config.workers.heartbeat_timeout * 1000))
        self.expire_dead_letters()
        return moved

    def expire_dead_letters(self) -> int:
        """Drop dead letters past their topic's ``dead_letter_ttl`` (none unless one is configured)."""
        ttl_for, shortest = self.config.dead_letter_ttls()
        if shortest is None:
            return 0
        from iii_console.core.dlq import DeadLetterStore, expire

        store = DeadLetterStore(self.services.client, self.services.keys)
        return expire(store, ttl_for, now_ms(), shortest_ms=shortest, cursor=self._dlq_cursor)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.workers.sweep_interval):
            self.sweep_once()


def main() -> int:
    """Entry of a worker child process: config comes from the supervisor as JSON."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(process)d %(name)s: %(message)s", stream=sys.stderr)
    config = Config(**json.loads(os.environ["III_CONFIG_JSON"]))
    index = int(os.environ.get("III_WORKER_INDEX", "0"))
    threads = int(os.environ.get("III_WORKER_THREADS", config.workers.threads))
    steps = discover(config.steps_path, config.project_dir)
    rt = WorkerRuntime(config, steps, threads=threads, index=index)
    # From the supervisor itself: one that died while we were still importing would
    # otherwise be mistaken for whoever adopted us.
    supervisor = int(os.environ.get("III_SUPERVISOR_PID") or os.getppid())
    rt.orphaned = lambda: os.getppid() != supervisor
    stop = rt.recycler.requested  # set by SIGTERM, or when this process should be replaced
    hard = HardStop(f"worker {rt.services.name}")
    interrupts = 0

    def on_signal(sig: int, _frame: object) -> None:
        # A second Ctrl+C stops it now. Only SIGINT counts: one Ctrl+C in a terminal reaches this
        # process as a SIGINT and, through its supervisor, as a SIGTERM too.
        nonlocal interrupts
        interrupts += sig == signal.SIGINT
        if interrupts >= 2:
            hard.now("a second Ctrl+C")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    hangup.watch(stop.set)  # the terminal closed (it reaches the whole job): drain as on SIGTERM
    hangup.keep_writing()  # a step's print to output nobody reads any more must not fail its attempt
    rt.start()
    # What start-up built (modules, the steps, the broker, the clients) lives as long as the process:
    # frozen, the cyclic collector's full passes no longer walk it (as the server does in cli/run.py).
    gc.collect()
    gc.freeze()
    while not stop.wait(0.5):
        if os.getppid() != supervisor:  # it died without telling us; we were handed to init or a subreaper
            break
    # Its supervisor kills it 5 s after the drain; an orphan or a recycled process has only this deadline.
    with hard.armed(config.workers.shutdown_timeout):
        rt.stop()
    return rt.recycler.exit_code


if __name__ == "__main__":
    sys.exit(main())
