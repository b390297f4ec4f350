"""Script calls issued concurrently on one event loop, sent to Redis together.

Under load the HTTP server has dozens of requests in flight, each doing a
state write and an enqueue: each is one small ``EVALSHA``. Sent one by one,
every call pays redis-py's per-command machinery (pool checkout, retry
wrapper, one socket write and one read) and a round trip of its own. Here a
call joins a queue; the first call of a loop iteration schedules a flush, and
everything queued by then goes out as one pipeline (``transaction=False``: the
calls stay independent, each gets its own reply or error). While a batch is on
the wire new calls collect for the next one, so batches grow with the load and
an idle server still answers in one loop iteration (the approach of ioredis's
auto-pipelining).

Scripts are sent with ``EVALSHA`` and loaded only when Redis answers
``NOSCRIPT`` (a restart or ``SCRIPT FLUSH``), not checked before every batch
as redis-py's pipelines do.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import redis
import redis.asyncio as aredis

#: Calls per pipeline; a bigger backlog goes out in several.
MAX_BATCH = 128
#: Pipelines on the wire at once (each holds one pooled connection).
MAX_IN_FLIGHT = 4

_Call = tuple[str, str, list[Any], list[Any], "asyncio.Future[Any]"]


class AutoPipeline:
    def __init__(self, client: aredis.Redis):
        self._client = client
        self._pending: list[_Call] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: Calls made and round trips they took (how much coalescing happens).
        self.calls = 0
        self.round_trips = 0

    def script(self, source: str) -> Callable[..., Awaitable[Any]]:
        """An async callable with ``AsyncScript``'s ``(keys=..., args=...)`` signature."""
        sha = hashlib.sha1(source.encode()).hexdigest()

        async def call(keys: list[Any] | None = None, args: list[Any] | None = None) -> Any:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.calls += 1
            self._pending.append((sha, source, list(keys or ()), list(args or ()), fut))
            if not self._scheduled:
                self._scheduled = True
                fut.get_loop().call_soon(self._kick)
            return await fut

        return call

    def _kick(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            batch = [c for c in batch if not c[4].done()]  # cancelled while waiting
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            results = await self._execute(batch)
            missing = {c[0]: c[1] for c, r in zip(batch, results) if isinstance(r, redis.exceptions.NoScriptError)}
            if missing:
                for source in missing.values():
                    await self._client.script_load(source)
                redo = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
                for i, r in zip(redo, await self._execute([batch[i] for i in redo])):
                    results[i] = r
        except BaseException as exc:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else redis.ConnectionError(str(exc) or "cancelled"))
        else:
            for (*_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._kick()

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """One round trip on one pooled connection: the ``EVALSHA``s packed together, the replies read in order.

        What redis-py's pipeline object adds on top of this (a command stack, response
        callbacks, operation metrics, script checks) is not needed for a batch of script
        calls, and cost a third of this path's CPU. Kept from it: the pool (so AUTH, TLS
        and Sentinel URLs connect as for every other call, and a full pool waits up to its
        timeout), the client's retry policy with a reconnect between attempts, the socket
        timeout of every read and write, and a connection whose replies were not all read
        is dropped, never reused.
        """
        self.round_trips += 1
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            cmds = [("EVALSHA", sha, len(keys), *keys, *args) for sha, _src, keys, args, _fut in batch]

            async def attempt() -> list[Any]:
                await conn.send_packed_command(_pack(conn, cmds))
                out: list[Any] = []
                try:
                    for _ in cmds:
                        try:
                            out.append(await conn.read_response())
                        except redis.ResponseError as exc:
                            out.append(exc)
                except BaseException:
                    await conn.disconnect(nowait=True)  # replies left unread: the socket is out of step
                    raise
                return out

            async def reconnect(_error: Exception) -> None:
                await conn.disconnect()

            return list(await conn.retry.call_with_retry(attempt, reconnect))
        finally:
            await pool.release(conn)


def _pack(conn: Any, cmds: list[tuple[Any, ...]]) -> bytes | list[bytes]:
    """The commands in RESP, by hiredis in one C call each (redis-py's packer encodes every
    argument in Python: ~20 µs for a unit of work's ~40 arguments, against ~3 µs here).

    hiredis takes str (as UTF-8), bytes, int and float, as redis-py's encoder does; anything
    else (None, a bool), or a client with another encoding, goes to redis-py's packer, which
    raises its own error for what it refuses.
    """
    if conn.encoder.encoding.lower().replace("-", "") == "utf8":
        try:
            return b"".join([hiredis.pack_command(c) for c in cmds])
        except TypeError:
            pass
    return conn.pack_commands(cmds)
