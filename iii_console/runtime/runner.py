"""Calling a step's handler: build its input and the right Context, sync or async.

Sync handlers run on the calling thread with sync clients. Async handlers run
on one event-loop thread per process (``LoopThread``) with async clients bound
to that loop, so a worker thread can wait on an async handler without creating
a loop per message.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff

from iii_console.adapters.queue.producer import Subscriptions, subscriptions_for
from iii_console.core import replication
from iii_console.core.autopipe import AutoPipeline
from iii_console.core.blobs import AsyncBlobs
from iii_console.core.context import Context, SyncContext, call_arity, is_async
from iii_console.core.discovery import StepSet
from iii_console.core.dlq import AsyncDeadLetters, DeadLetterStore
from iii_console.core.lease import AsyncLeases, Leases
from iii_console.core.progress import AsyncProgressStore, ProgressStore
from iii_console.core.redis_url import async_client_from_url
from iii_console.core.state import AsyncStateStore, StateStore
from iii_console.core.steps import Step
from iii_console.runtime import uow
from iii_console.runtime.brokers import make_async_producer, make_producer
from iii_console.runtime.services import Services

#: How often a thread waiting on an async handler wakes to take an asynchronous exception.
WAIT_SLICE_S = 0.1


class LoopThread:
    """One asyncio loop in a daemon thread, for async handlers called from worker threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="iii-async-handlers", daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            # In slices, so this thread runs Python code often enough to receive an
            # asynchronous exception (a time limit) while the coroutine runs.
            while True:
                try:
                    return fut.result(timeout=WAIT_SLICE_S)
                except FuturesTimeout:
                    if fut.done():  # the coroutine's own TimeoutError (the same class since 3.11)
                        return fut.result()
        except BaseException:
            fut.cancel()  # a time limit (or any interruption) cancels the coroutine
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


#: Redis connections one loop's async client may hold at once.
POOL_SIZE = 64
#: How long a call waits for a free connection when all are busy before failing
#: (as a connection error, so the HTTP server answers 503). redis-py's default
#: asyncio pool instead fails at once past 100 ("Too many connections"), which
#: turned every burst of more than 100 concurrent requests into 503s.
POOL_WAIT_S = 5.0


#: ``def`` handlers of HTTP steps running at once per server (beyond that, requests wait for a thread).
SYNC_HANDLER_THREADS = 64


class AsyncSide:
    """Async clients that live on one loop (the server's, or a LoopThread's)."""

    def __init__(self, services: Services, subscriptions: Subscriptions):
        cfg = services.config
        self.client = async_client_from_url(
            cfg.redis.url,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT_S,
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=15,
            retry=AsyncRetry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), 3),
        )
        self.autopipe = AutoPipeline(self.client)
        #: A handler run's writes in one call (``runtime/uow.py``); only where enqueues are Redis scripts.
        self.uow_script = self._uow_script() if cfg.broker == "redis" else None
        self.state = AsyncStateStore(
            self.client, services.keys, events_maxlen=cfg.events.maxlen, worker=services.name, autopipe=self.autopipe
        )
        self.producer = make_async_producer(services, subscriptions, self.client, self.autopipe)
        self.progress = AsyncProgressStore(self.client, services.keys, services.emitter)
        self.leases = AsyncLeases(self.client, services.keys)
        #: Threads for ``def`` handlers called from this loop. Not the loop's default executor:
        #: that has min(32, CPUs + 4) threads (6 on two cores), so six slow handlers would queue
        #: every other request, and the loop's own DNS lookups, behind them.
        self.handler_pool = ThreadPoolExecutor(max_workers=SYNC_HANDLER_THREADS, thread_name_prefix="iii-handler")

    def _uow_script(self) -> Callable[..., Any]:
        wait = replication.current()
        if not wait.on:
            return self.autopipe.script(uow.SOURCE)
        # Under redis.wait_replicas the unit's dedup keys, once-keys and state changes must be
        # followed by WAIT on the connection that wrote them: its own pipeline, not the shared one.
        registered = self.client.register_script(uow.SOURCE)

        async def waited(*, args: list[Any]) -> Any:
            return await wait.ascript(self.client, registered, args=args, what="an HTTP step's writes")

        return waited

    async def aclose(self) -> None:
        self.handler_pool.shutdown(wait=False)
        await self.client.aclose()


def make_runner(
    services: Services, steps: StepSet | Iterable[Step], *, loop_thread: LoopThread | None = None, async_side: bool = False
) -> StepRunner:
    """The one way the runtime builds a :class:`StepRunner` for a set of steps.

    Its producer sends to the subscriptions of ``steps``. Async handlers need
    async clients on the loop they run on: pass ``loop_thread`` (a worker: the
    clients are built on that loop), or ``async_side=True`` from a coroutine on
    the loop that will run them (the HTTP server). Whoever asks for them closes
    them: :meth:`StepRunner.aclose`.
    """
    subs = subscriptions_for(list(steps.steps if isinstance(steps, StepSet) else steps))
    return StepRunner(services, subs, loop_thread=loop_thread, async_side=AsyncSide(services, subs) if async_side else None)


class StepRunner:
    def __init__(
        self,
        services: Services,
        subscriptions: Subscriptions,
        *,
        loop_thread: LoopThread | None = None,
        async_side: AsyncSide | None = None,
    ):
        self.services = services
        self.state = StateStore(
            services.client,
            services.keys,
            events_maxlen=services.config.events.maxlen,
            worker=services.name,
            emitter=services.emitter,
        )
        self.producer = make_producer(services, subscriptions)
        self.progress = ProgressStore(services.client, services.keys, services.emitter)
        self.leases = Leases(services.client, services.keys)
        self.dead_letters = DeadLetterStore(services.client, services.keys)
        self.loop_thread = loop_thread
        self._async = async_side
        self._subs = subscriptions
        self._async_wrappers: tuple[AsyncBlobs, AsyncDeadLetters] | None = None
        if loop_thread is not None and async_side is None:
            # Build the async clients on the loop they will be used from.
            async def make() -> AsyncSide:
                return AsyncSide(services, subscriptions)

            self._async = loop_thread.run(make())

    async def aclose(self) -> None:
        """Close the async clients (on the loop they were used from)."""
        if self._async is not None:
            side, self._async = self._async, None
            await side.aclose()

    @property
    def async_side(self) -> AsyncSide:
        assert self._async is not None, "async handlers need an AsyncSide"
        return self._async

    @property
    def has_async_side(self) -> bool:
        return self._async is not None

    def open_async_side(self) -> None:
        """Build the async clients; call it on the loop that will use them (the server's, at startup)."""
        self._async = AsyncSide(self.services, self._subs)

    async def close_async_side(self) -> None:
        if self._async is not None:
            await self._async.aclose()

    def queue_names(self, topic: str) -> list[str]:
        """The queues (every priority of every subscription) a message to ``topic`` lands on."""
        return [q for sub in self._subs.get(topic, []) for q in sub.queues]

    def sync_context(
        self,
        step: Step,
        *,
        trace_id: str,
        attempt: int = 1,
        trigger: dict[str, Any] | None = None,
        message_id: str | None = None,
        max_attempts: int = 1,
        idempotency_key: str | None = None,
        run_key: str | None = None,
    ) -> SyncContext:
        return SyncContext(
            trace_id=trace_id,
            step=step.name,
            emitter=self.services.emitter,
            attempt=attempt,
            trigger=trigger or {},
            message_id=message_id,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            run_key=run_key,
            state=self.state.bind(trace_id=trace_id, step=step.name, message_id=message_id),
            blobs=self.services.blobs,
            dead_letters=self.dead_letters,
            _enqueue=self.producer.enqueue,
            _progress=self.progress,
            _enqueue_group=self.producer.enqueue_group,
            _leases=self.leases,
        )

    def async_context(
        self,
        step: Step,
        *,
        trace_id: str,
        attempt: int = 1,
        trigger: dict[str, Any] | None = None,
        message_id: str | None = None,
        max_attempts: int = 1,
        idempotency_key: str | None = None,
        unit: uow.UnitOfWork | None = None,
        run_key: str | None = None,
    ) -> Context:
        """The context of an ``async def`` handler; with ``unit``, its writes and enqueues go to that unit of work."""
        side = self.async_side
        if self._async_wrappers is None:  # stateless wrappers of the sync stores, made once
            self._async_wrappers = (AsyncBlobs(self.services.blobs), AsyncDeadLetters(self.dead_letters))
        blobs, dead_letters = self._async_wrappers
        return Context(
            trace_id=trace_id,
            step=step.name,
            emitter=self.services.emitter,
            attempt=attempt,
            trigger=trigger or {},
            message_id=message_id,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            run_key=run_key,
            state=side.state.bind(trace_id=trace_id, step=step.name, message_id=message_id)
            if unit is None
            else uow.UnitState(unit),
            blobs=blobs,
            dead_letters=dead_letters,
            _enqueue=side.producer.enqueue if unit is None else unit.enqueue,
            _progress=side.progress,
            _enqueue_group=side.producer.enqueue_group if unit is None else unit.enqueue_group,
            _leases=side.leases if unit is None else uow.UnitLeases(unit, side.leases),
        )

    def new_unit(self, step: Step, *, trace_id: str, message_id: str | None = None) -> uow.UnitOfWork:
        side = self.async_side
        assert side.uow_script is not None
        return uow.UnitOfWork(
            store=side.state.bind(trace_id=trace_id, step=step.name, message_id=message_id),
            producer=side.producer,
            script=side.uow_script,
        )

    def call_sync(self, step: Step, input: Any, **ctx_kw: Any) -> Any:
        """Run ``step``'s handler to completion from a plain (worker) thread."""
        handler: Callable[..., Any] = step.handler  # type: ignore[assignment]
        if is_async(handler):
            assert self.loop_thread is not None
            actx = self.async_context(step, **ctx_kw)
            # The task on the loop thread runs with this thread's context variables (its span, the
            # last event it put), and hands back the last event it put: the run's settle, made by
            # this thread, must follow it (the handler's log lines, its enqueues' events).
            emitter = self.services.emitter
            seen: list[int] = []
            try:
                return self.loop_thread.run(_carrying(contextvars.copy_context(), _invoke(handler, input, actx), emitter, seen))
            finally:
                if seen:
                    emitter.follow(seen[0])
        ctx = self.sync_context(step, **ctx_kw)
        return _not_awaitable(handler(ctx) if call_arity(handler) == 1 else handler(input, ctx))

    def runs_in_unit(self, step: Step) -> bool:
        """Whether ``call_async(step, ..., atomic=True)`` runs the handler in a unit of work."""
        return is_async(step.handler) and self.async_side.uow_script is not None  # type: ignore[arg-type]

    async def call_async(self, step: Step, input: Any, *, atomic: bool = False, **ctx_kw: Any) -> Any:
        """Run ``step``'s handler from the server's loop; sync handlers go to a thread.

        ``atomic``: an ``async def`` handler's state writes and enqueues are applied together
        when it returns, and not at all if it raises (``runtime/uow.py``; Redis broker only).
        """
        handler: Callable[..., Any] = step.handler  # type: ignore[assignment]
        if is_async(handler):
            if atomic and self.async_side.uow_script is not None:
                new_unit = functools.partial(
                    self.new_unit, step, trace_id=ctx_kw["trace_id"], message_id=ctx_kw.get("message_id")
                )
                return await uow.run_in_unit(
                    lambda unit: _invoke(handler, input, self.async_context(step, unit=unit, **ctx_kw)), new_unit
                )
            return await _invoke(handler, input, self.async_context(step, **ctx_kw))
        ctx = self.sync_context(step, **ctx_kw)
        fn = (lambda: handler(ctx)) if call_arity(handler) == 1 else (lambda: handler(input, ctx))
        ctxvars = contextvars.copy_context()
        out = await asyncio.get_running_loop().run_in_executor(self.async_side.handler_pool, ctxvars.run, fn)
        return _not_awaitable(out)


async def _carrying(ctxvars: contextvars.Context, coro: Any, emitter: Any, seen: list[int]) -> Any:
    """Run ``coro`` with the caller's context variables (the task it runs in has its own copy);
    ``seen`` gets the sequence number of the last event the task put."""
    for var, value in ctxvars.items():
        var.set(value)
    try:
        return await coro
    finally:
        seen.append(emitter.last_put)


async def _invoke(handler: Callable[..., Any], input: Any, ctx: Any) -> Any:
    return await (handler(ctx) if call_arity(handler) == 1 else handler(input, ctx))


def _not_awaitable(out: Any) -> Any:
    """A ``def`` handler that returns a coroutine (an ``async def`` hidden behind a plain
    wrapper) got the sync context and its work would silently never run: say so."""
    if inspect.isawaitable(out):
        if inspect.iscoroutine(out):
            out.close()
        raise TypeError(
            "the handler returned an awaitable but is not `async def` (a decorator hides it?); "
            "declare the handler itself `async def` so it gets the async context"
        )
    return out
