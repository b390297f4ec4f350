"""The run a Motia handler belongs to, and the module-level objects that act on it.

Motia's ``logger``, ``enqueue(...)``, ``stateManager`` and ``Stream(...)`` are module-level:
they reach the engine through a global client. Here they reach the current step run (its
trace id, step, queue message, state and producer) through a ``ContextVar`` that the
Motia handler wrapper sets for the length of the call. Threads the handler starts inherit
it (see :func:`inherit_in_threads`), as they would under Python 3.14's
``thread_inherit_context``.
"""

from __future__ import annotations

import builtins
import contextvars
import logging
import threading
import time
from typing import Any, Generic, TypeVar

from iii_console.core.context import SyncContext
from iii_console.core.steps import STREAM_GROUP_PREFIX  # stream NAME is the state group _stream.NAME, items GROUP_ID/ITEM_ID

_current: contextvars.ContextVar[SyncContext | None] = contextvars.ContextVar("iii_motia_run", default=None)
#: Whether the current run's step file awaits the module-level objects (Motia 1.0.1 to 1.0.3 made
#: ``stateManager``, ``enqueue`` and ``Stream``'s methods ``async def``; 1.0.4 made them plain again).
_awaited: contextvars.ContextVar[bool] = contextvars.ContextVar("iii_motia_awaited", default=False)
_stdlib = logging.getLogger("motia")

#: Field names a ``log`` event uses itself; a Motia log field of that name is kept as ``name_``.
_RESERVED_LOG_KEYS = {
    "trace_id",
    "message_id",
    "step",
    "topic",
    "queue",
    "attempt",
    "worker",
    "duration_ms",
    "error",
    "data",
    "ts",
    "event",
    "level",
    "message",
    "_log",
}


def current_run(what: str) -> SyncContext:
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError(
            f"motia {what} was called outside a step run (at import time, or in a thread started "
            f"before the run); call it from the handler or from a thread the handler starts"
        )
    return ctx


class Done:
    """A result already computed that may also be awaited (``await stateManager.get(...)``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # pragma: no cover  (makes this a generator)


def _out(value: Any) -> Any:
    """A module-level object's result: awaitable in a run whose step file awaits them, else the value itself."""
    return Done(value) if _awaited.get() else value


def run_in(ctx: SyncContext, *, awaited: bool = False) -> tuple[contextvars.Token[SyncContext | None], contextvars.Token[bool]]:
    return _current.set(ctx), _awaited.set(awaited)


def leave(tokens: tuple[contextvars.Token[SyncContext | None], contextvars.Token[bool]]) -> None:
    current, awaited = tokens
    _awaited.reset(awaited)
    _current.reset(current)


def inherit_in_threads() -> None:
    """Make threads started during a Motia run, and thread-pool tasks submitted during one,
    inherit the run (its context variables).

    Python 3.11 starts every thread in an empty context; Python 3.14 copies the starter's
    when ``thread_inherit_context`` is on. This does the same, only while a Motia run is
    current. A thread pool's worker threads are left alone (reused by later runs, they would
    keep the first run's trace): each task submitted to a pool runs in a copy of its
    submitter's context instead, as ``asyncio.to_thread`` does.
    """
    if getattr(threading.Thread.start, "_iii_motia", False):
        return
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import thread as _pool

    start_thread, submit_task = threading.Thread.start, ThreadPoolExecutor.submit

    def start(self: threading.Thread) -> None:
        if _current.get() is not None and getattr(self, "_target", None) is not _pool._worker:
            copied = contextvars.copy_context()
            run = self.run
            self.run = lambda: copied.run(run)  # type: ignore[method-assign]
        start_thread(self)

    def submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if _current.get() is not None:
            return submit_task(self, contextvars.copy_context().run, fn, *args, **kwargs)
        return submit_task(self, fn, *args, **kwargs)

    start._iii_motia = True  # type: ignore[attr-defined]
    threading.Thread.start = start  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign, assignment]


class Logger:
    """Motia's ``logger``: ``logger.info("text", {"field": value})``. Inside a run each line is a
    ``log`` event of that run, with the dict's fields; outside one it goes to Python logging."""

    def __init__(self, ctx: SyncContext | None = None) -> None:
        self._ctx = ctx

    def _emit(self, level: str, message: Any, data: Any = None, **kw: Any) -> None:
        ctx = self._ctx or _current.get()
        fields: dict[str, Any] = {}
        if isinstance(data, dict):
            fields.update(data)
        elif data is not None:
            fields["data"] = data
        fields.update(kw)
        fields = {(f"{k}_" if k in _RESERVED_LOG_KEYS else str(k)): v for k, v in fields.items()}
        if ctx is None:
            _stdlib.log(logging.getLevelName(level.upper()), "%s %s", message, fields or "")
            return
        getattr(ctx.logger, level)(str(message), **fields)

    def info(self, message: Any, data: Any = None, **kw: Any) -> None:
        self._emit("info", message, data, **kw)

    def warn(self, message: Any, data: Any = None, **kw: Any) -> None:
        self._emit("warning", message, data, **kw)

    warning = warn

    def error(self, message: Any, data: Any = None, **kw: Any) -> None:
        self._emit("error", message, data, **kw)

    def debug(self, message: Any, data: Any = None, **kw: Any) -> None:
        self._emit("debug", message, data, **kw)


def enqueue(event: dict[str, Any]) -> Any:
    """Motia's ``enqueue({"topic": ..., "data": ...})``: one copy to every step subscribed to the topic,
    on the current run's trace."""
    ctx = current_run("enqueue()")
    if not isinstance(event, dict) or not isinstance(event.get("topic"), str):
        raise TypeError('enqueue() takes {"topic": "name", "data": ...}')
    ctx.enqueue(event["topic"], event.get("data"))
    return _out(None)


class StateManager:
    """Motia's ``stateManager``: the state store, written on the current run's trace
    (each change a ``state.changed`` event that fires state steps)."""

    def _store(self) -> Any:
        return current_run("stateManager").state

    def get(self, scope: str, key: str) -> Any:
        return _out(self._store().get(scope, key))

    def set(self, scope: str, key: str, value: Any) -> Any:
        store = self._store()
        old = store.get(scope, key)
        return _out({"old_value": old, "new_value": store.set(scope, key, value)})

    def update(self, scope: str, key: str, ops: list[dict[str, Any]]) -> Any:
        store = self._store()
        old = store.get(scope, key)
        return _out({"old_value": old, "new_value": store.update(scope, key, ops)})

    def delete(self, scope: str, key: str) -> Any:
        return _out(self._store().delete(scope, key))

    def list(self, scope: str) -> Any:
        return _out(builtins.list(self._store().list(scope).values()))

    def list_groups(self) -> Any:
        return _out([g for g in self._store().groups() if not g.startswith(STREAM_GROUP_PREFIX)])

    def clear(self, scope: str) -> Any:
        store = self._store()
        for key in builtins.list(store.list(scope)):
            store.delete(scope, key)
        return _out(None)


TData = TypeVar("TData")


def stream_group(name: str) -> str:
    return STREAM_GROUP_PREFIX + name


def stream_key(group_id: str, item_id: str) -> str:
    if not isinstance(group_id, str) or not group_id or "/" in group_id:
        raise ValueError(f"stream group id {group_id!r}: must be a non-empty string without '/'")
    return f"{group_id}/{item_id}"


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


class Stream(Generic[TData]):
    """Motia's ``Stream(name)``: items grouped by ``group_id``, kept in the state store (group
    ``_stream.NAME``, key ``GROUP_ID/ITEM_ID``). Every change is a ``state.changed`` event the
    console shows, and fires the ``stream(NAME)`` steps."""

    def __init__(self, config: Any) -> None:
        self.stream_name: str = config if isinstance(config, str) else config.name
        self.config = config

    def _store(self) -> Any:
        return current_run(f"Stream({self.stream_name!r})").state

    def get(self, group_id: str, item_id: str) -> Any:
        return _out(self._store().get(stream_group(self.stream_name), stream_key(group_id, item_id)))

    def set(self, group_id: str, item_id: str, data: Any) -> Any:
        store, key = self._store(), stream_key(group_id, item_id)
        old = store.get(stream_group(self.stream_name), key)
        return _out({"old_value": old, "new_value": store.set(stream_group(self.stream_name), key, data)})

    def update(self, group_id: str, item_id: str, ops: list[dict[str, Any]]) -> Any:
        store, key = self._store(), stream_key(group_id, item_id)
        old = store.get(stream_group(self.stream_name), key)
        return _out({"old_value": old, "new_value": store.update(stream_group(self.stream_name), key, ops)})

    def delete(self, group_id: str, item_id: str) -> Any:
        self._store().delete(stream_group(self.stream_name), stream_key(group_id, item_id))
        return _out(None)

    def get_group(self, group_id: str) -> Any:
        prefix = stream_key(group_id, "")
        items = self._store().list(stream_group(self.stream_name))
        return _out([v for k, v in items.items() if k.startswith(prefix)])

    list = get_group

    def list_groups(self) -> Any:
        items = self._store().list(stream_group(self.stream_name))
        return _out(sorted({k.split("/", 1)[0] for k in items}))


class Streams:
    """``ctx.streams.NAME``: the stream of that name."""

    def __getattr__(self, name: str) -> Stream[Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        return Stream(name)

    def __getitem__(self, name: str) -> Stream[Any]:
        return Stream(name)


def stream_change(group: str, key: str, old: Any, new: Any) -> dict[str, Any] | None:
    """A state change of a stream group as Motia's stream trigger input fields, or None."""
    if not group.startswith(STREAM_GROUP_PREFIX) or "/" not in key:
        return None
    group_id, item_id = key.split("/", 1)
    kind = "create" if old is None else ("delete" if new is None else "update")
    return {
        "timestamp": int(time.time() * 1000),
        "stream_name": group[len(STREAM_GROUP_PREFIX) :],
        "group_id": group_id,
        "id": item_id,
        "event": {"type": kind, "data": old if new is None else new},
    }


def stream_key_glob(group_id: str | None, item_id: str | None) -> str:
    return f"{glob_escape(group_id) if group_id else '*'}/{glob_escape(item_id) if item_id else '*'}"
