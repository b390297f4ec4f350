"""The worker pool: queue workers as child processes, supervised.

Entered, it starts ``processes`` workers (``runtime/worker.py``) and a monitor
that notices a child's exit at once: what the child held goes back to its
queues now (``sweep.recover_worker``), and the child is restarted after a
backoff. :meth:`WorkerPool.reload` replaces the children one by one (each drains
and requeues, then the new code takes over). Exited, it SIGTERMs every child,
waits up to ``shutdown_timeout`` (+5 s) for them to drain, kills what is left,
and recovers the messages of any that did not stop cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from iii_console.core.config import Config
from iii_console.core.discovery import StepSet
from iii_console.core.files import open_private_log, private_dir
from iii_console.runtime.recycling import RECYCLE_EXIT
from iii_console.runtime.services import Services

log = logging.getLogger(__name__)
RESTART_BACKOFF_MAX_S = 10.0


def exit_description(code: int) -> dict[str, Any]:
    """``{"exit_code": 1}`` or ``{"signal": "SIGKILL"}`` for a child's return code."""
    if code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": str(-code)}
    return {"exit_code": code}


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes]
    #: The worker id the process runs under (its in-flight sets are named by it).
    worker_id: str = ""
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    #: Set while a reload replaces the process, so the monitor does not restart it as well.
    reloading: bool = False
    #: Set from the monitor seeing it exit until its replacement is started.
    restarting: bool = False
    #: Its heartbeat's last score seen in Redis (``None``: none yet, or swept), whether it ever had one,
    #: and when (monotonic) the score last changed or the watch last restarted (``_frozen``).
    heartbeat: float | None = None
    heartbeat_seen: bool = False
    heartbeat_changed: float = field(default_factory=time.monotonic)


#: Beyond ``shutdown_timeout``, how long a stop or a reload waits for a worker process before it kills it.
STOP_GRACE_S = 5.0
#: How often the pool looks for a worker process that runs but no longer heartbeats, and how long past
#: ``heartbeat_timeout`` its heartbeat must have stood still (by this process's clock, Redis answering) before it is killed.
FROZEN_CHECK_S = 1.0
FROZEN_GRACE_S = 2.0


async def _end_by(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for ``proc`` to exit until ``deadline`` (monotonic), then kill it; whether it had to be killed."""
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is not None:
        return False
    proc.kill()
    await asyncio.to_thread(proc.wait)
    return True


def _running(pid: int) -> bool:
    """Whether process ``pid`` is scheduled to run (not stopped by a signal or a debugger, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the heartbeat alone decides
    return state not in (b"T", b"t", b"Z", b"X")


class WorkerPool:
    """``processes`` worker processes with ``threads`` threads each, restarted when they exit."""

    def __init__(
        self,
        config: Config,
        services: Services,
        *,
        processes: int,
        threads: int,
        log_dir: Path | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.services = services
        self.processes = processes
        self.threads = threads
        #: When set, each child's stderr goes to ``log_dir/worker-N.log`` instead of ours.
        self.log_dir = log_dir
        #: True once the supervisor is stopping: exits are no longer restarted.
        self._stopping = stopping
        self.children: list[Child] = []
        self._monitor_task: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()
        #: When (monotonic) Redis last answered the frozen-worker check (0: not lately).
        self._last_answer = 0.0

    def stopping(self) -> bool:
        return self._stopping()

    async def __aenter__(self) -> WorkerPool:
        for i in range(self.processes):
            self.children.append(Child(i, *self._spawn(i)))
        self._monitor_task = asyncio.create_task(self._monitor(), name="iii-monitor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.workers.shutdown_timeout + STOP_GRACE_S
        for child in self.children:
            await _end_by(child.proc, deadline)
            if child.proc.returncode not in (0, RECYCLE_EXIT) and not child.restarting:
                await self._recover(child.worker_id, child.proc.returncode)
        for task in [self._monitor_task, *self._restarts]:
            if task is not None:
                task.cancel()

    async def reload(self, steps: StepSet) -> None:
        """Rolling restart: each old process drains and requeues, then the new code takes over.

        The children discover the steps themselves as they start; ``steps`` is what
        every role's ``reload`` takes.
        """
        for child in self.children:
            child.reloading = True
            try:
                old, old_id = child.proc, child.worker_id
                if old.poll() is None:
                    old.send_signal(signal.SIGTERM)
                    # As at a stop: its handlers get ``shutdown_timeout``; one that cannot stop (stalled, or stuck
                    # in a call that holds the GIL) is killed, and what it held runs again, rather than holding
                    # every later reload (and the other workers' new code) for good.
                    grace = self.config.workers.shutdown_timeout + STOP_GRACE_S
                    if await _end_by(old, time.monotonic() + grace):
                        log.warning("worker process %s did not stop for the reload; killed it", old.pid)
                        self.services.emitter.emit(
                            "log",
                            data={
                                "level": "warning",
                                "message": f"worker process {old.pid} did not stop within "
                                f"{grace:g} s of the reload; killed, what it held runs again",
                            },
                        )
                if old.returncode not in (0, RECYCLE_EXIT) and not child.restarting:  # (the monitor recovered a crash it saw)
                    await self._recover(old_id, old.returncode)
                self._respawn(child)
            finally:
                child.reloading = False

    @property
    def codes(self) -> list[int | None]:
        return [c.proc.returncode for c in self.children]

    def _respawn(self, child: Child) -> None:
        """Start a new process in ``child``'s place, its heartbeat watch (``_frozen``) starting over."""
        child.proc, child.worker_id = self._spawn(child.index)
        child.started = child.heartbeat_changed = time.monotonic()
        child.heartbeat, child.heartbeat_seen = None, False

    def _spawn(self, index: int) -> tuple[subprocess.Popen[bytes], str]:
        """Start worker process ``index``; returns it and the worker id it runs under."""
        worker_id = str(uuid.uuid4())
        env = dict(os.environ)
        env.update(
            III_CONFIG_JSON=self.config.model_dump_json(),
            III_WORKER_INDEX=str(index),
            III_WORKER_THREADS=str(self.threads),
            III_SUPERVISOR_PID=str(os.getpid()),
            III_WORKER_ID=worker_id,
        )
        stderr: Any = None
        if self.log_dir is not None:
            stderr = open_private_log(private_dir(self.log_dir) / f"worker-{index}.log")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "iii_console.runtime.worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.config.project_dir,
            ), worker_id
        finally:
            if stderr is not None:
                stderr.close()

    async def _recover(self, worker_id: str, code: int) -> int:
        """A child exited without its clean stop: give back what it held, now.

        Its in-flight messages return to the head of their queues (one
        ``message.redelivered`` each) and ``worker.stopped`` names the exit
        signal, without waiting for its heartbeat to age past
        ``heartbeat_timeout``. Retried until Redis answers (nothing is lost
        meanwhile: the sweep would find them too); at a stop, for a bounded time.
        """
        from iii_console.adapters.queue.scripts import Scripts
        from iii_console.adapters.queue.sweep import recover_worker

        svc = self.services
        how = exit_description(code)
        delay = 0.1
        deadline = time.monotonic() + 10
        while True:
            try:
                return await asyncio.to_thread(
                    recover_worker, svc.client, svc.keys, Scripts(svc.client), svc.emitter, worker_id, reason="crashed", **how
                )
            except redis.RedisError as exc:
                if self.stopping() and time.monotonic() > deadline:
                    log.warning("could not recover worker %s's messages (%s); the next sweep will", worker_id, exc)
                    return 0
                log.warning("recovering worker %s: Redis unavailable (%s); retrying", worker_id, exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _monitor(self) -> None:
        """Notice a worker process's exit at once: recover what it held now, restart it after a backoff.

        The restart waits in a task of its own, so a backoff for one child never
        delays noticing (and recovering) another.
        """
        next_check = time.monotonic() + FROZEN_CHECK_S
        checking: asyncio.Task[None] | None = None
        while not self.stopping():
            if time.monotonic() >= next_check and (checking is None or checking.done()):
                # In a task of its own: a Redis that does not answer must not keep exits from being noticed.
                checking = asyncio.create_task(self._kill_frozen(), name="iii-frozen-check")
                self._restarts.add(checking)
                checking.add_done_callback(self._restarts.discard)
                next_check = time.monotonic() + FROZEN_CHECK_S
            for child in self.children:
                proc = child.proc
                code = proc.poll()
                if code is None or self.stopping() or child.reloading or child.restarting:
                    continue
                child.restarting = True
                if code == RECYCLE_EXIT:
                    delay = 0.0  # it asked to be replaced (and its worker.stopped said why): not a crash
                else:
                    if code != 0:
                        await self._recover(child.worker_id, code)
                    delay = (
                        min(RESTART_BACKOFF_MAX_S, 0.5 * (2 ** min(child.restarts, 5)))
                        if time.monotonic() - child.started < 10
                        else 0.2
                    )
                    self.services.emitter.emit(
                        "log",
                        data={
                            "level": "error",
                            "message": f"worker process {proc.pid} exited with {code}; restarting in {delay:.1f}s",
                        },
                    )
                task = asyncio.create_task(
                    self._restart_later(child, proc, delay, counts=code != RECYCLE_EXIT), name="iii-restart"
                )
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)
            await asyncio.sleep(0.05)

    async def _kill_frozen(self) -> None:
        """Kill a worker process that runs but no longer heartbeats (``_frozen``): the monitor then recovers what
        it held and starts another, as after a crash."""
        asked = time.monotonic()
        try:
            scores = await asyncio.to_thread(self._heartbeats)
        except redis.RedisError:
            scores = None
        answered = time.monotonic()
        steady = scores is not None and answered - asked < FROZEN_CHECK_S and asked - self._last_answer < 3 * FROZEN_CHECK_S
        self._last_answer = answered if scores is not None else 0.0
        if not steady:
            # Redis away, slow or paused (or this loop was): nothing says a worker froze, and the workers'
            # heartbeats resume after it; their stillness is counted again from now.
            for child in self.children:
                child.heartbeat_changed = answered
            return
        assert scores is not None
        for child in self.children:
            if not self._frozen(child, scores.get(child.worker_id)):
                continue
            proc = child.proc
            timeout = self.config.workers.heartbeat_timeout
            log.error("worker process %s has not heartbeaten for over %g s while running; killing it", proc.pid, timeout)
            self.services.emitter.emit(
                "log",
                data={
                    "level": "error",
                    "message": f"worker process {proc.pid} runs but has not heartbeaten for over {timeout:g} s (a handler "
                    "stuck in a call that holds the GIL?); killed: what it held runs again",
                },
            )
            proc.kill()

    def _heartbeats(self) -> dict[str, float | None]:
        """Each child's heartbeat score in Redis (``None``: none), read in one round trip."""
        ids = [c.worker_id for c in self.children]
        scores = self.services.client.zmscore(self.services.keys.worker_heartbeats, ids) if ids else []
        return dict(zip(ids, scores))

    def _frozen(self, child: Child, score: float | None) -> bool:
        """Whether ``child`` runs (not stopped: a SIGSTOP is a stall the sweep handles, and it may be resumed) but its
        heartbeat, once seen, has not moved for ``heartbeat_timeout`` + ``FROZEN_GRACE_S`` by this process's clock.
        A worker whose threads are all held by a handler that keeps the GIL (a catastrophic regular expression, a C
        loop) heartbeats no more and cannot act on its time limit: only a kill ends it."""
        now = time.monotonic()
        if child.proc.poll() is not None or child.reloading or child.restarting or self.stopping():
            return False
        if score is not None:
            child.heartbeat_seen = True
        if score != child.heartbeat:
            child.heartbeat, child.heartbeat_changed = score, now
            return False
        if not child.heartbeat_seen or now - child.heartbeat_changed < self.config.workers.heartbeat_timeout + FROZEN_GRACE_S:
            return False
        return _running(child.proc.pid)

    async def _restart_later(self, child: Child, proc: subprocess.Popen[bytes], delay: float, *, counts: bool = True) -> None:
        try:
            await asyncio.sleep(delay)
            if self.stopping() or child.proc is not proc or child.reloading:
                return  # a reload has replaced it meanwhile (or is doing so)
            self._respawn(child)
            child.restarts += counts
        finally:
            child.restarting = False
