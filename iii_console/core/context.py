"""What a handler receives besides its input.

There are two flavours with the same surface, like httpx's Client/AsyncClient:
an ``async def`` handler gets :class:`Context` (``await ctx.enqueue(...)``,
``await ctx.state.get(...)``), a ``def`` handler gets :class:`SyncContext`
(plain calls). The runtime picks by inspecting the handler, so a sync handler
running in a worker thread never needs an event loop.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iii_console.core import spans
from iii_console.core.emitter import Emitter

if TYPE_CHECKING:
    from iii_console.core.state import AsyncState, State


@dataclass(frozen=True)
class HttpRequest:
    """Input of an HTTP step: the validated body plus the request's parts."""

    body: Any
    path_params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    method: str
    path: str


@dataclass(frozen=True)
class StateChange:
    """Input of a state step: one change to one key."""

    group: str
    key: str
    old: Any
    new: Any
    trace_id: str = ""


@dataclass(frozen=True)
class CronTick:
    """Input of a cron step: when the tick was due and when it actually fired (ms), and whether it was run by hand."""

    scheduled_ms: int
    fired_ms: int
    #: True for a tick fired by ``iii-console cron run`` rather than the schedule.
    manual: bool = False


@dataclass
class _BaseContext:
    trace_id: str
    step: str
    emitter: Emitter
    attempt: int = 1
    trigger: Mapping[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    #: The last attempt the queue's strategy allows (``max_retries + 1``; 1 for HTTP), so a
    #: handler can tell "will be retried" from "this failure is final" when it records one.
    max_attempts: int = 1
    #: An HTTP request's ``Idempotency-Key`` header (``None`` without one, and outside HTTP steps):
    #: pass it as ``dedup_key`` so a client's retried request enqueues its work once.
    idempotency_key: str | None = None
    #: What a run's default group ids start with when it has no ``message_id`` of its own: a
    #: batch's (``batch-`` and a digest of its message ids), so a rerun of the same batch makes
    #: each of its groups once too.
    run_key: str | None = None

    @property
    def logger(self) -> Any:
        """structlog logger bound to this step and trace; lines become ``log`` events."""
        return self.emitter.logger(step=self.step, trace_id=self.trace_id, message_id=self.message_id, **spans.log_fields())

    def emit(self, type: str, **fields: Any) -> None:
        """Emit a domain event (``notification.sent``...) on the same trace. Never blocks."""
        if not isinstance(type, str):
            # Motia's emit({"topic": ..., "data": ...}) sends to a topic; here that is enqueue.
            raise TypeError(
                "ctx.emit(type, **fields) records an event such as 'notification.sent'; "
                "to send data to a topic use ctx.enqueue(topic, data)"
            )
        fields.setdefault("trace_id", self.trace_id)
        fields.setdefault("step", self.step)
        if self.message_id:  # the queue message whose run emitted it, like the step's log lines
            fields.setdefault("message_id", self.message_id)
        self.emitter.emit(type, **fields)

    def _group_id(self, group_id: str | None) -> str | None:
        """A group id that a rerun of this message's handler gives again (so the group is not made twice).

        The n-th group a queue run makes is ``{message_id}.{n}`` (a batch's run:
        ``{run_key}.{n}``); outside a queue run (HTTP) a fresh id is made by the producer.
        """
        base = self.message_id or self.run_key
        if group_id is not None or not base:
            return group_id
        n = self.__dict__.get("_groups_made", 0)
        self.__dict__["_groups_made"] = n + 1
        return f"{base}.{n}"

    def _progress_kw(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "step": self.step, "message_id": self.message_id}


Enqueue = Callable[..., Any]


@dataclass
class Context(_BaseContext):
    """Context for ``async def`` handlers."""

    #: ``await ctx.state.get(group, key)``, ``set``, ``update``, ``delete``... (``core/state.py``).
    state: AsyncState = None  # type: ignore[assignment]  # set by the runner that builds the context
    #: ``await ctx.blobs.put(data)`` -> a ref; ``open``, ``read``, ``delete``, ``path`` (``core/blobs.py``).
    blobs: Any = None
    #: The dead-letter store, for retention sweeps written as steps: ``await ctx.dead_letters.list(name)``,
    #: ``purge_before(ms, name=None)`` (``core/dlq.py``).
    dead_letters: Any = None
    _enqueue: Callable[..., Awaitable[list[str]]] | None = None
    _progress: Any = None
    _enqueue_group: Any = None
    _leases: Any = None

    async def lock(self, name: str, ttl_ms: int) -> Any:
        """Take the lease ``name`` for ``ttl_ms`` (``LockTaken`` if held): an ``AsyncLease`` with a fencing token."""
        assert self._leases is not None
        return await self._leases.acquire(name, ttl_ms)

    async def enqueue_group(
        self,
        topic: str,
        items: list[Any],
        *,
        then: str,
        group_id: str | None = None,
        priority: str | list[str | None] | None = None,
    ) -> str:
        """Fan out one child per item to ``topic``; when every child is settled (processed or
        dead-lettered, for any reason) one message goes to ``then`` with the counts. Returns the group id.

        ``priority`` is one for every child, or a list of one per item."""
        assert self._enqueue_group is not None
        return await self._enqueue_group(
            topic,
            items,
            then=then,
            group_id=self._group_id(group_id),
            priority=priority,
            trace_id=self.trace_id,
            source=self.step,
        )

    async def progress(self, done: float, total: float, note: str | None = None) -> None:
        """Report how far this run has got: a ``progress`` event, and the trace's latest value kept in Redis."""
        assert self._progress is not None
        await self._progress.report(done, total, note, **self._progress_kw())

    async def enqueue(
        self,
        topic: str,
        data: Any,
        *,
        priority: str | None = None,
        delay_ms: int = 0,
        dedup_key: str | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> list[str]:
        """Enqueue ``data`` to ``topic`` (one copy per subscribed step); returns the message ids.

        With ``dedup_key``, an enqueue to the same topic under the same key within
        ``dedup_ttl_ms`` (default 24 h) enqueues nothing and returns the first one's ids.
        """
        assert self._enqueue is not None
        return await self._enqueue(
            topic,
            data,
            trace_id=self.trace_id,
            priority=priority,
            delay_ms=delay_ms,
            source=self.step,
            **_dedup(dedup_key, dedup_ttl_ms),
        )


@dataclass
class SyncContext(_BaseContext):
    """Context for ``def`` handlers: the same methods, called without ``await``."""

    #: ``ctx.state.get(group, key)``, ``set``, ``update``, ``delete``... (``core/state.py``).
    state: State = None  # type: ignore[assignment]  # set by the runner that builds the context
    #: ``ctx.blobs.put(data)`` -> a ref; ``open``, ``read``, ``delete``, ``path`` (``core/blobs.py``).
    blobs: Any = None
    #: The dead-letter store: ``list(name=None)``, ``count(name)``, ``purge_before(ms, name=None)`` (``core/dlq.py``).
    dead_letters: Any = None
    _enqueue: Callable[..., Any] | None = None
    _progress: Any = None
    _enqueue_group: Any = None
    _leases: Any = None

    def lock(self, name: str, ttl_ms: int) -> Any:
        """Take the lease ``name`` for ``ttl_ms`` (``LockTaken`` if held): a ``Lease`` with a fencing token."""
        assert self._leases is not None
        return self._leases.acquire(name, ttl_ms)

    def enqueue_group(
        self,
        topic: str,
        items: list[Any],
        *,
        then: str,
        group_id: str | None = None,
        priority: str | list[str | None] | None = None,
    ) -> str:
        assert self._enqueue_group is not None
        return self._enqueue_group(
            topic,
            items,
            then=then,
            group_id=self._group_id(group_id),
            priority=priority,
            trace_id=self.trace_id,
            source=self.step,
        )

    def progress(self, done: float, total: float, note: str | None = None) -> None:
        assert self._progress is not None
        self._progress.report(done, total, note, **self._progress_kw())

    def enqueue(
        self,
        topic: str,
        data: Any,
        *,
        priority: str | None = None,
        delay_ms: int = 0,
        dedup_key: str | None = None,
        dedup_ttl_ms: int | None = None,
    ) -> list[str]:
        assert self._enqueue is not None
        return self._enqueue(
            topic,
            data,
            trace_id=self.trace_id,
            priority=priority,
            delay_ms=delay_ms,
            source=self.step,
            **_dedup(dedup_key, dedup_ttl_ms),
        )


def _dedup(key: str | None, ttl_ms: int | None) -> dict[str, Any]:
    if key is None:
        if ttl_ms is not None:
            raise TypeError("dedup_ttl_ms is given without a dedup_key")
        return {}
    return {"dedup_key": key} if ttl_ms is None else {"dedup_key": key, "dedup_ttl_ms": ttl_ms}


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` (a function, or an object whose ``__call__`` is) is ``async def``.

    Memoised like :func:`call_arity`: it runs on every message, and ``inspect``
    looks an object's ``__call__`` up the slow way.
    """
    try:
        return _is_async_cached(fn)
    except TypeError:  # an unhashable callable object
        return _is_async(fn)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004  (the method, not callability)


def call_arity(fn: Callable[..., Any]) -> int:
    """1 for ``handler(ctx)``, 2 for ``handler(input, ctx)``, 0 if it fits neither.

    Memoised: it runs on every message and ``inspect.signature`` is not cheap.
    """
    try:
        return _call_arity_cached(fn)
    except TypeError:  # an unhashable callable object
        return _call_arity(fn)


def _call_arity(fn: Callable[..., Any]) -> int:
    try:
        every = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 2
    params = [p for p in every if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in every)
    required = [p for p in params if p.default is p.empty]
    if len(required) > 2 or any(p.kind == p.KEYWORD_ONLY and p.default is p.empty for p in every):
        return 0  # arguments are passed by position: a required keyword-only one would never be given
    if len(params) >= 2 or varargs:
        return 2
    return 1 if params else 0


_call_arity_cached = functools.lru_cache(maxsize=512)(_call_arity)
_is_async_cached = functools.lru_cache(maxsize=512)(_is_async)
