"""The embedded Redis, supervised: reaped when it dies, started again on the same
data directory (its append-only file), port and password, so every client of
the project reconnects on its own.

Runs as a task on the supervisor's loop, which owns the server: the restart
forks from that (main) thread so the new server still dies with its owner
(``PR_SET_PDEATHSIG`` follows the forking thread), and the loop waits the few
milliseconds redis-server takes to answer. Each death is a ``redis.down``
event, each successful start a ``redis.restarted`` (both reach the stream once
Redis is back: the emitter holds them meanwhile). A server that keeps dying is
restarted after growing delays (:class:`RestartBackoff`), never in a hot loop.

On the other side of a restart, a worker process that starts while Redis is away
waits for it (:func:`wait_for_redis`) rather than dying on its first heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from iii_console.core.errors import IIIError
from iii_console.runtime.embedded import EmbeddedRedis

log = logging.getLogger(__name__)

#: How often the watchdog looks whether the server is still running (and reaps it if not).
POLL_S = 0.2


@dataclass
class RestartBackoff:
    """Delay before restart number n: none for a server that ran ``stable_s`` or more, then
    ``base_s`` doubling per quick death (or failed start) up to ``max_s``."""

    base_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 30.0
    quick_deaths: int = 0

    def next_delay(self, ran_s: float) -> float:
        if ran_s >= self.stable_s:
            self.quick_deaths = 0
        delay = 0.0 if self.quick_deaths == 0 else min(self.max_s, self.base_s * 2 ** (self.quick_deaths - 1))
        self.quick_deaths += 1
        return delay


class RedisWatchdog:
    def __init__(
        self,
        embedded: EmbeddedRedis,
        emit: Callable[..., Any],
        *,
        stopping: Callable[[], bool] = lambda: False,
        backoff: RestartBackoff | None = None,
        poll_s: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.embedded = embedded
        self.emit = emit
        self.stopping = stopping
        self.backoff = backoff or RestartBackoff()
        self.poll_s = poll_s
        self.clock = clock
        self.restarts = 0
        self._up_since = clock()

    async def run(self) -> None:
        while not self.stopping():
            await asyncio.sleep(self.poll_s)
            pid = self.embedded.pid
            how = self.embedded.exited()  # reaps it: no zombie
            if how is not None and not self.stopping():
                await self._recover(pid, how)

    async def _recover(self, pid: int | None, how: str) -> None:
        down_at = self.clock()
        ran_s = down_at - self._up_since
        attempt = 0
        error: str | None = None
        while not self.stopping():
            delay = self.backoff.next_delay(ran_s)
            ran_s = 0.0
            self.emit(
                "redis.down",
                error=error or f"embedded redis-server (pid {pid}) {how}",
                data={"pid": pid, "exit": how, "attempt": attempt, "restart_in_ms": int(delay * 1000), "restarts": self.restarts},
            )
            log.warning("embedded Redis %s; restarting it in %.1f s", error or f"(pid {pid}) {how}", delay)
            await asyncio.sleep(delay)
            if self.stopping():
                return
            attempt += 1
            try:
                new_pid = self.embedded.restart()
            except IIIError as exc:
                error = f"restarting the embedded Redis failed: {exc}"
                continue
            self.restarts += 1
            self._up_since = self.clock()
            down_ms = int((self._up_since - down_at) * 1000)
            self.emit(
                "redis.restarted",
                data={
                    "pid": new_pid,
                    "previous_pid": pid,
                    "exit": how,
                    "down_ms": down_ms,
                    "attempts": attempt,
                    "restarts": self.restarts,
                },
            )
            log.warning("embedded Redis restarted (pid %s) after %d ms down", new_pid, down_ms)
            return


def wait_for_redis(fn: Callable[[], Any], *, stop: threading.Event, orphaned: Callable[[], bool]) -> None:
    """Run a worker's start-up call, waiting for Redis if it is away (a process started while
    the embedded Redis restarts) instead of dying with a traceback. Returns early once ``stop``
    is set; exits the process if ``orphaned()`` (its supervisor gone, nobody would stop it)."""
    warned = False
    while True:
        try:
            fn()
            return
        except redis.ConnectionError as exc:
            if not warned:
                log.warning("worker starting: Redis unavailable (%s); waiting for it", exc)
                warned = True
        if stop.wait(0.5):
            return
        if orphaned():
            log.warning("worker starting: its supervisor is gone and Redis is unavailable; exiting")
            raise SystemExit(1)
