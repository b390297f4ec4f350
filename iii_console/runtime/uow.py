"""A unit of work: an HTTP step's state writes and enqueues, applied together when its handler returns.

While an ``async def`` handler of an HTTP step runs, ``ctx.state.set`` / ``update`` /
``delete`` / ``replace``, ``ctx.enqueue`` and ``ctx.enqueue_group`` are recorded, not sent.
When the handler returns, ``uow.lua`` checks and applies all of them in one script call (one
round trip, shared with other requests' calls by the autopipeline), before the answer goes
out; if the handler raises, nothing is sent. Each write still writes its own ``state.changed``
event and each enqueue its ``message.enqueued`` events, in the same call, so the event stream
shows exactly what Redis holds.

Reads see the run's own pending writes. What a write returns is decided when it is called:

* ``set`` is blind: it guesses the key's current value (absent, or what the run read) only
  for its event's ``old``; when the guess is wrong the call is made again with the value found.
* ``update``, ``delete``, ``replace`` and an enqueue with a ``dedup_key`` answer from a value
  read during the run (the key's, or the dedup key's). The call checks that each such value is
  still what was read; if another writer changed one in between, nothing is written and the
  handler runs again on fresh values (at most :data:`MAX_RUNS` times), as a compare-and-set
  retries: what a handler was told is always what was written.

``ctx.lock`` ends the deferral: what is pending is applied then, and later writes go out as
they are made, so they land while the lease is held.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from iii_console.adapters.queue.producer import AsyncProducer
from iii_console.adapters.queue.scripts import ENQUEUE_FUNCTION
from iii_console.core import spans
from iii_console.core.errors import StateError
from iii_console.core.events import encode_data, now_ms
from iii_console.core.luasrc import with_prelude
from iii_console.core.state import ABSENT, CHANGES_MAXLEN, AsyncStateStore, _dump, _load, _text, apply_ops

SOURCE = with_prelude(ENQUEUE_FUNCTION, resources.files(__package__).joinpath("uow.lua"))
#: Runs of a handler whose values changed under it before its writes were applied.
MAX_RUNS = 20
#: Calls of a unit whose only stale values were ``set``'s guesses (no rerun needed).
MAX_CALLS = 100


class Conflict(Exception):
    """A value a run answered from changed before its writes were applied: run it again."""


@dataclass
class _StateOp:
    hash: str
    field: str
    group: str
    expected: str | None  # raw JSON, None: absent
    new: str | None
    value: Any  # the new value (for the event)
    op: str
    #: The handler was answered from ``expected`` (update, delete, replace): a stale one means a rerun.
    strict: bool


@dataclass
class _EnqueueOp:
    args: list[Any]
    #: ``("", "")``, ``("absent", "")`` or ``("value", ids_json)``: what the dedup key held when answered.
    expect: tuple[str, str]


@dataclass
class UnitOfWork:
    """The pending writes of one handler run, and the call that applies them."""

    store: AsyncStateStore  # bound to the run's trace, step and message
    producer: AsyncProducer
    script: Callable[..., Awaitable[Any]]
    ops: list[_StateOp | _EnqueueOp] = field(default_factory=list)
    #: (group, key) -> raw JSON the run will leave (None: deleted), for read-your-writes.
    pending: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: (group, key) -> raw JSON read from Redis during the run, for ``set``'s guess.
    seen: dict[tuple[str, str], str | None] = field(default_factory=dict)
    #: dedup key -> the ids JSON it will hold after this run.
    dedup: dict[str, str] = field(default_factory=dict)
    #: False once the run took a lease: writes then go out as they are made.
    deferring: bool = True

    # -- state --------------------------------------------------------------------
    async def _current(self, group: str, key: str, *, writing: bool = False) -> str | None:
        if writing and (not group or not isinstance(group, str) or not isinstance(key, str) or not key):
            raise StateError("group and key must be non-empty strings")
        gk = (group, key)
        if gk in self.pending:
            return self.pending[gk]
        raw = _text(await self.store.client.hget(self.store.keys.state_group(group), key))
        self.seen[gk] = raw
        return raw

    def _record(self, group: str, key: str, expected: str | None, value: Any, op: str, *, strict: bool) -> None:
        if not group or not isinstance(group, str) or not isinstance(key, str) or not key:
            raise StateError("group and key must be non-empty strings")
        new = None if value is None else _dump(value)
        self.ops.append(_StateOp(self.store.keys.state_group(group), key, group, expected, new, value, op, strict))
        self.pending[(group, key)] = new
        spans.event(f"state.{op}", **{"iii.group": group, "iii.key": key})

    async def set(self, group: str, key: str, value: Any) -> Any:
        if value is None:
            raise StateError("cannot set None; use delete")
        gk = (group, key)
        guess = self.pending[gk] if gk in self.pending else self.seen.get(gk)
        self._record(group, key, guess, value, "set", strict=gk in self.pending)
        return value

    async def update(self, group: str, key: str, ops: Iterable[Mapping[str, Any]]) -> Any:
        old = await self._current(group, key, writing=True)
        new = apply_ops(_load(old), list(ops))
        self._record(group, key, old, new, "update", strict=True)
        return new

    async def delete(self, group: str, key: str) -> Any:
        old = await self._current(group, key, writing=True)
        self._record(group, key, old, None, "delete", strict=True)
        return _load(old)

    async def replace(self, group: str, key: str, expected: Any, value: Any) -> bool:
        if value is None:
            raise StateError("cannot set None; use delete")
        cur = await self._current(group, key, writing=True)
        if cur != (None if expected is None else _dump(expected)):
            # Answered False from ``cur``: it must still be that when the writes are applied.
            self.ops.append(_StateOp(self.store.keys.state_group(group), key, group, cur, cur, None, "set", True))
            return False
        self._record(group, key, cur, value, "set", strict=True)
        return True

    # -- queue --------------------------------------------------------------------
    async def enqueue(self, topic: str, data: Any, **kw: Any) -> list[str]:
        if not self.deferring:
            return await self.producer.enqueue(topic, data, **kw)
        prep = self.producer.prepare(topic, data, **kw)
        if prep.args is None:
            return prep.ids
        expect = ("", "")
        ids = prep.ids
        if prep.once is not None:
            held = self.dedup.get(prep.once)
            if held is None:
                held = _text(await self.store.client.get(prep.once))
            if held is None:
                expect = ("absent", "")
                self.dedup[prep.once] = json.dumps(ids, separators=(",", ":"))
            else:
                expect, ids = ("value", held), list(json.loads(held))
        self.ops.append(_EnqueueOp(prep.args, expect))
        return ids

    async def enqueue_group(self, topic: str, items: Any, **kw: Any) -> str:
        if not self.deferring:
            return await self.producer.enqueue_group(topic, items, **kw)
        gid, args = self.producer.prepare_group(topic, items, **kw)
        self.ops.append(_EnqueueOp(args, ("", "")))
        return gid

    # -- applying -----------------------------------------------------------------
    def _args(self, events: bytes | str = "") -> list[Any]:
        s = self.store
        k = s.keys
        args: list[Any] = [
            k.state_groups,
            k.state_changes,
            k.events,
            k.state_watched,
            CHANGES_MAXLEN,
            s.events_maxlen,
            s.trace_id,
            s.step,
            s.message_id,
            s.worker,
            events,
        ]
        ts = now_ms()
        for op in self.ops:
            if isinstance(op, _StateOp):
                data = encode_data({"group": op.group, "key": op.field, "op": op.op, "old": _load(op.expected), "new": op.value})
                args += [
                    "s",
                    op.hash,
                    op.field,
                    ABSENT if op.expected is None else op.expected,
                    ABSENT if op.new is None else op.new,
                    op.group,
                    ts,
                    data,
                ]
            else:
                args += ["e", op.expect[0], op.expect[1], len(op.args), *op.args]
        return args

    async def apply(self) -> None:
        """Apply every pending write in one call; :class:`Conflict` if the run must be made again."""
        if not self.ops:
            return
        emitter = self.producer.emitter
        for attempt in range(MAX_CALLS):
            # The events this request holds back (its ``http.received``, its logs) go first in the
            # same call; taken off the hold only once written (a refused call writes none of them).
            held = emitter.held()
            pre = list(held.events) if held is not None else []
            stream = emitter.stream
            reply = await self.script(args=self._args(stream.payload(pre, ()) if pre and stream is not None else ""))
            if reply[0] == 1:
                if held is not None:
                    del held.events[: len(pre)]
                self._clear()
                return
            for i in range(1, len(reply), 2):
                op = self.ops[int(reply[i]) - 1]
                if not isinstance(op, _StateOp) or op.strict:
                    raise Conflict()
                # A blind set's guess of the old value (only its event's ``old``): take the one found.
                op.expected = _text(reply[i + 1])
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        raise StateError(f"state: too much contention, gave up after {MAX_CALLS} tries")

    def _clear(self) -> None:
        self.ops.clear()
        self.pending.clear()
        self.seen.clear()
        self.dedup.clear()

    async def stop_deferring(self) -> None:
        """Apply what is pending now, and let later writes go out as they are made (a lease was taken)."""
        await self.apply()
        self.deferring = False
        held = self.producer.emitter.held()
        if held is not None:  # later writes go out as they are made: their events must not wait behind these
            self.producer.emitter.release(held)


class UnitLeases:
    """``ctx.lock`` of a run with a unit of work: what is pending is applied before the lease is taken."""

    def __init__(self, unit: UnitOfWork, leases: Any):
        self._u = unit
        self._leases = leases

    async def acquire(self, name: str, ttl_ms: int) -> Any:
        if self._u.deferring:
            await self._u.stop_deferring()
        return await self._leases.acquire(name, ttl_ms)


class UnitState:
    """``ctx.state`` of a run with a unit of work: the store's surface, writes deferred, reads overlaid."""

    def __init__(self, unit: UnitOfWork):
        self._u = unit
        self._s = unit.store

    async def get(self, group: str, key: str) -> Any:
        return _load(await self._u._current(group, key))  # also a later ``set``'s guess of the old value

    async def get_many(self, group: str, keys: Sequence[str]) -> dict[str, Any]:
        u = self._u
        out = await self._s.get_many(group, [k for k in keys if (group, k) not in u.pending])
        for k in keys:
            if (group, k) in u.pending:
                raw = u.pending[(group, k)]
                if raw is not None:
                    out[k] = _load(raw)
        return {k: out[k] for k in keys if k in out}

    async def list(self, group: str, *, limit: int | None = None) -> dict[str, Any]:
        mine = {k: raw for (g, k), raw in self._u.pending.items() if g == group}
        if not mine:
            return await self._s.list(group, limit=limit)
        out = await self._s.list(group)
        for k, raw in mine.items():
            if raw is None:
                out.pop(k, None)
            else:
                out[k] = _load(raw)
        keys = sorted(out)[:limit] if limit is not None else sorted(out)
        return {k: out[k] for k in keys}

    async def groups(self) -> builtins.list[str]:
        found = set(await self._s.groups())
        for g in {g for (g, _k) in self._u.pending}:
            if await self.list(g, limit=1):
                found.add(g)
            else:
                found.discard(g)
        return sorted(found)

    async def set(self, group: str, key: str, value: Any) -> Any:
        if not self._u.deferring:
            return await self._s.set(group, key, value)
        return await self._u.set(group, key, value)

    async def update(self, group: str, key: str, ops: Iterable[Mapping[str, Any]]) -> Any:
        if not self._u.deferring:
            return await self._s.update(group, key, ops)
        return await self._u.update(group, key, ops)

    async def delete(self, group: str, key: str) -> Any:
        if not self._u.deferring:
            return await self._s.delete(group, key)
        return await self._u.delete(group, key)

    async def replace(self, group: str, key: str, expected: Any, value: Any) -> bool:
        if not self._u.deferring:
            return await self._s.replace(group, key, expected, value)
        return await self._u.replace(group, key, expected, value)


async def run_in_unit(make: Callable[[UnitOfWork], Awaitable[Any]], new_unit: Callable[[], UnitOfWork]) -> Any:
    """Run ``make(unit)`` (a handler with a context built on ``unit``) and apply its writes; again on a conflict."""
    for run in range(MAX_RUNS):
        unit = new_unit()
        try:
            out = await make(unit)
            await unit.apply()
        except Conflict:
            await asyncio.sleep(random.uniform(0, 0.005 * (run + 1)))
            continue
        return out
    raise StateError(f"state: values kept changing under the handler, gave up after {MAX_RUNS} runs")
