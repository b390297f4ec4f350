"""The state store: JSON values in one Redis hash per group.

Every change is a compare-and-set done by ``lua/state_cas.lua``, which in the
same atomic step appends the change to the ``state-changes`` stream (read by the
trigger dispatcher through a consumer group, so a trigger fires even if the
writer dies right after) and a ``state.changed`` event to the event stream.
Only groups some state step watches (``state-watched``, registered by the
supervisor at start and on reload, and by workers at start and on every sweep)
get the stream record: it carries the whole old and new value, and nothing
reads it for other groups. A write that leaves the value as it was (same JSON)
is no change: no event, no trigger.

Update operations are computed in Python on the value read (exact JSON, no Lua
JSON quirks) and written only if the value is still what was read; on a race the
script hands back the current value and the op is recomputed from it.
Contention is per key, not per group. ``set`` and ``delete`` do not depend on
the old value, so they skip the read and first guess "absent": a new key (the
common case: a new message's record) costs one round trip, an existing one two.

One module because the sync and async stores run the same plans: each operation is
written once here and both stores execute it.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import redis
import redis.asyncio as aredis

from iii_console.core import replication, spans
from iii_console.core.errors import StateError
from iii_console.core.events import encode_data, now_ms
from iii_console.core.keys import Keys
from iii_console.core.luasrc import core_script

ABSENT = "\0"
_SCRIPT = core_script("state_cas")
_OPS = ("set", "merge", "increment", "remove")
MAX_CAS_TRIES = 100
CHANGES_MAXLEN = 100_000
#: Keys per HSCAN page when listing a group.
LIST_PAGE = 1000

T = TypeVar("T")


def _path(path: str | list[str] | None) -> list[str]:
    if path is None or path == "" or path == []:
        return []
    if not isinstance(path, (str, list, tuple)):
        raise StateError(f"invalid path {path!r}: a dotted string or a list of keys")
    parts = path.split(".") if isinstance(path, str) else list(path)
    if any(not isinstance(p, str) or p == "" for p in parts):
        raise StateError(f"invalid path {path!r}")
    return parts


def apply_ops(value: Any, ops: Iterable[Mapping[str, Any]]) -> Any:
    """Apply update ops to a JSON value and return the new value (input untouched).

    Ops follow Motia's shape: ``{"type": "set", "path": "status", "value": "x"}``,
    ``{"type": "merge", "path": "meta", "value": {...}}``, ``{"type": "increment",
    "path": "attempts", "by": 1}``, ``{"type": "remove", "path": "error"}``.
    An empty path means the whole value.
    """
    if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Iterable):
        raise StateError(f"update ops must be a list of ops, not {type(ops).__name__} (one op goes in a list: [op])")
    root = {"": deepcopy(value)}
    for op in ops:
        if not isinstance(op, Mapping):
            raise StateError(f"an update op must be an object like {{'type': 'set', 'path': ..., 'value': ...}}, not {op!r}")
        kind = op.get("type")
        if kind not in _OPS:
            raise StateError(f"unknown update op {kind!r}; expected one of {', '.join(_OPS)}")
        parts = ["", *_path(op.get("path"))]
        parent: Any = root
        for p in parts[:-1]:
            nxt = parent.get(p) if isinstance(parent, dict) else None
            if kind == "remove" and not isinstance(nxt, dict):
                parent = None  # the path does not exist: nothing to remove
                break
            if nxt is None:
                nxt = parent[p] = {}
            if not isinstance(nxt, dict):
                raise StateError(f"{op.get('path')!r}: {p!r} is not an object")
            parent = nxt
        if parent is None:
            continue
        leaf = parts[-1]
        if kind == "set":
            parent[leaf] = deepcopy(op.get("value"))
        elif kind == "remove":
            parent.pop(leaf, None)
        elif kind == "increment":
            by = op.get("by", 1)
            cur = parent.get(leaf, 0)
            if cur is None:
                cur = 0
            if (
                isinstance(cur, bool)
                or not isinstance(cur, (int, float))
                or isinstance(by, bool)
                or not isinstance(by, (int, float))
            ):
                raise StateError(f"increment {op.get('path')!r}: {cur!r} + {by!r} is not numeric")
            parent[leaf] = cur + by
        else:  # merge
            patch = op.get("value")
            cur = parent.get(leaf)
            if cur is None:
                cur = {}
            if not isinstance(cur, dict) or not isinstance(patch, dict):
                raise StateError(f"merge {op.get('path')!r}: both sides must be objects")
            parent[leaf] = {**cur, **deepcopy(patch)}
    return root.get("")


#: ``json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)``, its encoder built once, not per call.
_DUMP = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)


def _dump(value: Any) -> str:
    try:
        return _DUMP.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StateError(f"value is not JSON-serialisable: {exc}") from None


def _load(raw: bytes | str | None) -> Any:
    return None if raw is None else json.loads(raw)


def _listing(raw: Mapping[Any, Any]) -> dict[str, Any]:
    return {(k.decode() if isinstance(k, bytes) else k): _load(v) for k, v in sorted(raw.items())}


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


#: Ops whose new value does not depend on the old one (see the module docstring).
_BLIND = ("set", "delete")
#: "Not read yet": the first try of an op that needs the old value reads it.
_UNREAD = object()


def _outcome(reply: list[Any]) -> tuple[bool, str | None]:
    """(written or unchanged, else False with the current raw value to recompute from)."""
    if reply[0] != 0:
        return True, None
    return False, _text(reply[1]) if len(reply) > 1 and reply[1] is not None else None


# -- one implementation, two drivers -----------------------------------------------
#
# Each operation is written once, as a plan: a generator that yields the Redis
# commands it needs (and the pauses between compare-and-set tries) and gets each
# reply sent back. ``StateStore`` runs a plan with blocking calls, ``AsyncStateStore``
# awaits the same steps, so the two stores cannot drift apart.


@dataclass(frozen=True)
class _Call:
    """One Redis command of a plan: ``client.<name>(*args)``, or the CAS script with ``keys``/``args``."""

    name: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class _Pause:
    seconds: float


_Plan = Generator["_Call | _Pause", Any, T]


@runtime_checkable
class State(Protocol):
    """The state a ``def`` handler gets as ``ctx.state`` (and the CLI and console use)."""

    def get(self, group: str, key: str) -> Any: ...
    def get_many(self, group: str, keys: Sequence[str]) -> dict[str, Any]: ...
    def list(self, group: str, *, limit: int | None = None) -> dict[str, Any]: ...
    def groups(self) -> builtins.list[str]: ...
    def set(self, group: str, key: str, value: Any) -> Any: ...
    def update(self, group: str, key: str, ops: Iterable[Mapping[str, Any]]) -> Any: ...
    def delete(self, group: str, key: str) -> Any: ...
    def replace(self, group: str, key: str, expected: Any, value: Any) -> bool: ...


@runtime_checkable
class AsyncState(Protocol):
    """The state an ``async def`` handler gets as ``ctx.state``: :class:`State`, awaited."""

    async def get(self, group: str, key: str) -> Any: ...
    async def get_many(self, group: str, keys: Sequence[str]) -> dict[str, Any]: ...
    async def list(self, group: str, *, limit: int | None = None) -> dict[str, Any]: ...
    async def groups(self) -> builtins.list[str]: ...
    async def set(self, group: str, key: str, value: Any) -> Any: ...
    async def update(self, group: str, key: str, ops: Iterable[Mapping[str, Any]]) -> Any: ...
    async def delete(self, group: str, key: str) -> Any: ...
    async def replace(self, group: str, key: str, expected: Any, value: Any) -> bool: ...


class _Base:
    def __init__(
        self,
        keys: Keys,
        *,
        trace_id: str = "",
        step: str = "",
        message_id: str = "",
        worker: str = "",
        events_maxlen: int = 100_000,
        emitter: Any = None,
    ):
        self.keys = keys
        #: The process's emitter (sync store): a write carries the events its thread put before it,
        #: as an enqueue does (``Emitter.transition``), so a run's start and log lines precede its
        #: ``state.changed`` on the stream.
        self.emitter = emitter
        self.trace_id = trace_id
        self.step = step
        #: Which run and which process made the change: the ``state.changed`` event is
        #: written by the script itself (atomically with the change), not by the
        #: emitter that stamps these on every other event.
        self.message_id = message_id
        self.worker = worker
        self.events_maxlen = events_maxlen

    def _bound(self, trace_id: str, step: str, message_id: str | None) -> Any:
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__, trace_id=trace_id, step=step, message_id=message_id or "")
        return other

    def _cas_args(self, group: str, key: str, old_raw: str | None, new: Any, op: str) -> tuple[list[str], list[Any]]:
        if not group or not isinstance(group, str) or not isinstance(key, str) or not key:
            raise StateError("group and key must be non-empty strings")
        try:
            group.encode(), key.encode()
        except UnicodeEncodeError:
            raise StateError("group and key must be valid Unicode text (no lone surrogates)") from None
        new_raw = ABSENT if new is None else _dump(new)
        data = encode_data({"group": group, "key": key, "op": op, "old": _load(old_raw), "new": new})
        keys = [
            self.keys.state_group(group),
            self.keys.state_groups,
            self.keys.state_changes,
            self.keys.events,
            self.keys.state_watched,
        ]
        args = [
            key,
            ABSENT if old_raw is None else old_raw,
            new_raw,
            group,
            CHANGES_MAXLEN,
            self.events_maxlen,
            self.trace_id,
            now_ms(),
            data,
            "",  # E: events the caller carries along (_events.lua), filled in by the sync store
            "step",
            self.step,
            "message_id",
            self.message_id,
            "worker",
            self.worker,
        ]
        return keys, args

    # -- plans -------------------------------------------------------------------
    def _get(self, group: str, key: str) -> _Plan[Any]:
        return _load((yield _Call("hget", (self.keys.state_group(group), key))))

    def _get_many(self, group: str, keys: Sequence[str]) -> _Plan[dict[str, Any]]:
        """The values of those ``keys`` that exist, in one round trip."""
        if not keys:
            return {}
        raws = yield _Call("hmget", (self.keys.state_group(group), list(keys)))
        return {k: _load(v) for k, v in zip(keys, raws) if v is not None}

    def _list(self, group: str, limit: int | None) -> _Plan[dict[str, Any]]:
        """The group's keys and values, sorted by key; with ``limit``, at most that many
        (some of the group's keys, not necessarily the first ones in order).

        Read with ``HSCAN`` in pages, so a large group does not hold Redis up the
        way one ``HGETALL`` would, and ``limit`` stops reading early.
        """
        raw: dict[Any, Any] = {}
        cursor = 0
        while True:
            cursor, page = yield _Call("hscan", (self.keys.state_group(group), cursor, None, LIST_PAGE))
            for k, v in page.items():
                raw[k] = v
                if limit is not None and len(raw) >= limit:
                    return _listing(raw)
            if not cursor:
                return _listing(raw)

    def _groups(self) -> _Plan[list[str]]:
        return sorted(_text(g) or "" for g in (yield _Call("smembers", (self.keys.state_groups,))))

    def _set(self, group: str, key: str, value: Any) -> _Plan[Any]:
        if value is None:
            raise StateError("cannot set None; use delete")
        return (yield from self._write(group, key, lambda _old: value, "set"))

    def _update(self, group: str, key: str, ops: Iterable[Mapping[str, Any]]) -> _Plan[Any]:
        ops = list(ops)
        return (yield from self._write(group, key, lambda old: apply_ops(old, ops), "update"))

    def _delete(self, group: str, key: str) -> _Plan[Any]:
        """Delete and return the old value (``None`` if there was none)."""
        old: list[Any] = []

        def gone(value: Any) -> None:
            old.append(value)  # the last value read is the one the winning try deleted
            return None

        yield from self._write(group, key, gone, "delete")
        return old[-1] if old else None

    def _replace(self, group: str, key: str, expected: Any, value: Any) -> _Plan[bool]:
        """Set ``value`` only if the key still holds ``expected`` (``None``: absent); False if it changed.

        For a person editing a value they read a while ago: their save must not
        silently undo a change a step made in the meantime.
        """
        if value is None:
            raise StateError("cannot set None; use delete")
        keys, args = self._cas_args(group, key, None if expected is None else _dump(expected), value, "set")
        written, _current = _outcome((yield _Call("cas", (keys, args))))
        return written

    def _write(self, group: str, key: str, compute: Callable[[Any], Any], op: str) -> _Plan[Any]:
        """The compare-and-set loop: compute from the value read, write only if it is still that value."""
        old_raw: Any = None if op in _BLIND else _UNREAD
        for attempt in range(MAX_CAS_TRIES):
            if old_raw is _UNREAD:
                old_raw = _text((yield _Call("hget", (self.keys.state_group(group), key))))
            new = compute(_load(old_raw))
            keys, args = self._cas_args(group, key, old_raw, new, op)
            written, old_raw = _outcome((yield _Call("cas", (keys, args))))
            if written:
                spans.event(f"state.{op}", **{"iii.group": group, "iii.key": key})
                return new
            if attempt:
                yield _Pause(random.uniform(0, 0.002 * attempt))
        raise StateError(f"state {group}/{key}: too much contention, gave up after {MAX_CAS_TRIES} tries")


class StateStore(_Base):
    """Synchronous state store, for ``def`` handlers and the CLI."""

    def __init__(self, client: redis.Redis, keys: Keys, **kw: Any):
        super().__init__(keys, **kw)
        self.client = client
        self._cas = client.register_script(_SCRIPT)

    def _run(self, plan: _Plan[T]) -> T:
        reply: Any = None
        try:
            while True:
                step = plan.send(reply)
                if isinstance(step, _Pause):
                    time.sleep(step.seconds)
                    reply = None
                elif step.name == "cas":
                    reply = self._write_cas(*step.args)
                else:
                    reply = getattr(self.client, step.name)(*step.args)
        except StopIteration as done:
            return done.value

    def _write_cas(self, keys: list[str], args: list[Any]) -> Any:
        wait, what = replication.current(), f"a state change of {args[3]}/{args[0]}"

        def call(events: bytes | str) -> Any:
            return wait.script(self.client, self._cas, keys=keys, args=[*args[:9], events, *args[10:]], what=what)

        return call("") if self.emitter is None else self.emitter.transition(call)

    def bind(self, *, trace_id: str = "", step: str = "", message_id: str | None = None) -> StateStore:
        return self._bound(trace_id, step, message_id)

    def get(self, group: str, key: str) -> Any:
        return self._run(self._get(group, key))

    def get_many(self, group: str, keys: Sequence[str]) -> dict[str, Any]:
        return self._run(self._get_many(group, keys))

    def list(self, group: str, *, limit: int | None = None) -> dict[str, Any]:
        return self._run(self._list(group, limit))

    def groups(self) -> builtins.list[str]:
        return self._run(self._groups())

    def set(self, group: str, key: str, value: Any) -> Any:
        return self._run(self._set(group, key, value))

    def update(self, group: str, key: str, ops: Iterable[Mapping[str, Any]]) -> Any:
        return self._run(self._update(group, key, ops))

    def delete(self, group: str, key: str) -> Any:
        return self._run(self._delete(group, key))

    def replace(self, group: str, key: str, expected: Any, value: Any) -> bool:
        return self._run(self._replace(group, key, expected, value))


class AsyncStateStore(_Base):
    """The same store for ``async def`` handlers and the HTTP server."""

    def __init__(self, client: aredis.Redis, keys: Keys, *, autopipe: Any = None, **kw: Any):
        super().__init__(keys, **kw)
        self.client = client
        #: With an :class:`~iii_console.core.autopipe.AutoPipeline`, concurrent
        #: writes (the server's requests) share round trips.
        self._cas = autopipe.script(_SCRIPT) if autopipe is not None else client.register_script(_SCRIPT)
        self._cas_waited = client.register_script(_SCRIPT)

    async def _run(self, plan: _Plan[T]) -> T:
        reply: Any = None
        try:
            while True:
                step = plan.send(reply)
                if isinstance(step, _Pause):
                    await asyncio.sleep(step.seconds)
                    reply = None
                elif step.name == "cas":
                    keys, args = step.args
                    wait = replication.current()
                    if wait.on:  # the WAIT must follow the write on its connection: not through the autopipe
                        reply = await wait.ascript(
                            self.client, self._cas_waited, keys=keys, args=args, what=f"a state change of {args[3]}/{args[0]}"
                        )
                    else:
                        reply = await self._cas(keys=keys, args=args)
                else:
                    reply = await getattr(self.client, step.name)(*step.args)
        except StopIteration as done:
            return done.value

    def bind(self, *, trace_id: str = "", step: str = "", message_id: str | None = None) -> AsyncStateStore:
        return self._bound(trace_id, step, message_id)

    async def get(self, group: str, key: str) -> Any:
        return await self._run(self._get(group, key))

    async def get_many(self, group: str, keys: Sequence[str]) -> dict[str, Any]:
        return await self._run(self._get_many(group, keys))

    async def list(self, group: str, *, limit: int | None = None) -> dict[str, Any]:
        return await self._run(self._list(group, limit))

    async def groups(self) -> builtins.list[str]:
        return await self._run(self._groups())

    async def set(self, group: str, key: str, value: Any) -> Any:
        return await self._run(self._set(group, key, value))

    async def update(self, group: str, key: str, ops: Iterable[Mapping[str, Any]]) -> Any:
        return await self._run(self._update(group, key, ops))

    async def delete(self, group: str, key: str) -> Any:
        return await self._run(self._delete(group, key))

    async def replace(self, group: str, key: str, expected: Any, value: Any) -> bool:
        return await self._run(self._replace(group, key, expected, value))
