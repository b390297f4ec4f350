"""One supervisor per ``iii-console`` invocation.

It owns the embedded Redis (if any), serves HTTP steps and runs the scheduler
in its own process, and runs queue workers as child processes, so a CPU-bound
handler never freezes the server or the console and a crashed worker is
restarted. Shutdown order: stop accepting HTTP, stop the scheduler, SIGTERM the
workers (they drain and requeue), read the last events, stop Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis
import uvicorn

from iii_console.adapters.http_timeouts import timed_protocol
from iii_console.adapters.queue.producer import subscriptions_for
from iii_console.adapters.server import create_app
from iii_console.core.config import Config, redact_url
from iii_console.core.discovery import StepSet, discover
from iii_console.core.errors import ConfigError, IIIError, RedisUnavailable
from iii_console.core.events import Event
from iii_console.core.files import open_private_log, private_dir
from iii_console.runtime.embedded import EmbeddedRedis
from iii_console.runtime.recycling import RECYCLE_EXIT
from iii_console.runtime.redis_watchdog import RedisWatchdog
from iii_console.runtime.runner import AsyncSide, StepRunner
from iii_console.runtime.scheduler import Scheduler
from iii_console.runtime.services import Services, redis_client
from iii_console.runtime.worker import watch_state_triggers

log = logging.getLogger(__name__)
ROLES = ("server", "worker", "scheduler")
RESTART_BACKOFF_MAX_S = 10.0


#: How long a hot-reloaded app's old clients stay open for requests still running on it.
RETIRE_GRACE_S = 30.0


def _held(app: Any) -> tuple[Any, Any]:
    """(depth gate, async clients) an app built by ``create_app`` holds."""
    runner = getattr(app, "runner", None)
    return getattr(app, "gate", None), getattr(runner, "_async", None)


async def _close_quietly(gate: Any, side: Any) -> None:
    for closer in (gate, side):
        if closer is not None:
            try:
                await closer.aclose()
            except Exception:  # closing at shutdown or after a reload; nothing to report to
                log.debug("closing %r failed", closer, exc_info=True)


class SwappableApp:
    """The ASGI app uvicorn serves; hot reload replaces ``app`` between requests."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def resolve_redis(config: Config) -> tuple[Config, EmbeddedRedis | None]:
    """Use the configured Redis, or start (or join) the project's embedded one."""
    if config.redis.url:
        return config, None
    emb = EmbeddedRedis(config.data_dir, maxmemory=config.redis.maxmemory, appendfsync=config.redis.appendfsync)
    url = emb.start()
    return config.with_overrides(**{"redis.url": url}), emb


def check_redis(url: str) -> None:
    c = redis_client(url, socket_timeout=3)
    try:
        c.ping()
    except redis.AuthenticationError as exc:
        from urllib.parse import urlsplit

        if not urlsplit(url).password:
            raise RedisUnavailable(f"Redis at {redact_url(url)} needs a password: put it in the URL "
                                   "(redis://:PASSWORD@host:port/0, or redis://USER:PASSWORD@... for an ACL user)") from None
        raise RedisUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    finally:
        c.close()


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


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        roles: tuple[str, ...] = ROLES,
        processes: int | None = None,
        threads: int | None = None,
        on_event: Callable[[Event], None] | None = None,
        log_dir: Path | None = None,
    ):
        self.config = config
        self.roles = roles
        self.processes = processes or config.workers.processes
        self.threads = threads or config.workers.threads
        self.on_event = on_event
        #: When set (the interactive console owns the terminal), worker processes'
        #: stderr goes to ``log_dir/worker-N.log`` instead of the screen.
        self.log_dir = log_dir
        self.embedded: EmbeddedRedis | None = None
        self.steps = StepSet()
        self.children: list[Child] = []
        self.services: Services | None = None
        self.scheduler: Scheduler | None = None
        self.server: uvicorn.Server | None = None
        self.app: SwappableApp | None = None
        #: Replaced apps waiting out their grace period, and what they hold.
        self._retiring: set[asyncio.Task[None]] = set()
        self._unretired: list[tuple[Any, AsyncSide | None]] = []
        self.port: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._restarts: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._tail_from = "0-0"
        self._tail_thread: threading.Thread | None = None
        self._tail_done = threading.Event()

    # -- start --------------------------------------------------------------
    async def start(self) -> None:
        self.config, self.embedded = resolve_redis(self.config)
        try:
            check_redis(self.config.redis.url)
            self.services = Services.open(self.config, "supervisor", traced="server" in self.roles)
            last = self.services.client.xrevrange(self.services.keys.events, count=1)
            self._tail_from = last[0][0].decode() if last else "0-0"
            if self.on_event is not None:
                self._tail_thread = threading.Thread(target=self._tail, name="iii-tail", daemon=True)
                self._tail_thread.start()
            self.steps = discover(self.config.steps_path)
            for err in self.steps.errors:
                self.services.emitter.emit("step.error", step=err.step, error=str(err),
                                           data={"file": err.file, "line": err.line, "field": err.field, "message": err.message})
            self._publish_registry()
            from iii_console.adapters.queue.delays import migrate_legacy_delay_queues

            if moved := migrate_legacy_delay_queues(self.services.client, self.services.keys):
                log.warning("moved %d delayed message(s) from an older version's delay queues", moved)
            if self.embedded is not None and self.embedded.owned:
                watchdog = RedisWatchdog(self.embedded, self.services.emitter.emit, stopping=lambda: self._stopping)
                self._tasks.append(asyncio.create_task(watchdog.run(), name="iii-redis-watchdog"))
            if "server" in self.roles:
                await self._start_server()
            if "scheduler" in self.roles and self.steps.cron_steps():
                runner = StepRunner(self.services, subscriptions_for(self.steps.steps))
                self.scheduler = Scheduler(self.services, self.steps.cron_steps(), runner.producer)
                self.scheduler.start()
            if "worker" in self.roles:
                for i in range(self.processes):
                    self.children.append(Child(i, *self._spawn(i)))
                self._tasks.append(asyncio.create_task(self._monitor(), name="iii-monitor"))
            # The supervisor outlives its workers, so it sweeps too: a crashed
            # worker's messages come back even while its replacement boots (and
            # the workers of a host that is gone, whatever roles this one runs).
            self._tasks.append(asyncio.create_task(self._sweep(), name="iii-sweep"))
        except BaseException:
            await self.stop()
            raise

    def _publish_registry(self) -> None:
        assert self.services is not None
        c, k = self.services.client, self.services.keys
        pipe = c.pipeline()
        pipe.delete(k.steps_registry, k.queues_registry)
        for s in self.steps.steps:
            pipe.hset(k.steps_registry, s.name, json.dumps(s.describe()))
        for t in sorted(set(self.steps.topics) | {"default"}):
            pipe.hset(k.queues_registry, t, self.config.queue(t).model_dump_json())
        pipe.execute()
        # Before anything of this version can change state: changes to the groups
        # its state steps watch are recorded from now on, and fire once a worker runs.
        watch_state_triggers(c, k, self.steps)

    async def _start_server(self) -> None:
        assert self.services is not None
        cfg = self.config.server
        if not cfg.loopback and not cfg.auth_token:
            raise ConfigError(f"refusing to listen on {cfg.host} without server.auth_token "
                              "(anyone who can reach it could enqueue work); set one, or bind 127.0.0.1")
        # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is
        # IPPROTO_TCP, and accepted sockets inherit it. With proto 0 every answer on a
        # kept-alive connection waited ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as exc:
            sock.close()
            raise IIIError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror} (set server.port or --port)") from None
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        runner = StepRunner(self.services, subscriptions_for(self.steps.steps))
        self.app = SwappableApp(create_app(runner, self.steps.http_steps(), max_body_bytes=cfg.max_body_bytes))
        srv = self.config.server
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=10,
                                                    http=timed_protocol(srv.header_timeout, srv.body_timeout),
                                                    limit_concurrency=srv.max_connections))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._tasks.append(asyncio.create_task(self.server.serve(sockets=[sock]), name="iii-server"))
        for _ in range(500):
            if self.server.started:
                return
            await asyncio.sleep(0.01)
        raise IIIError("HTTP server did not start")

    # -- hot reload ---------------------------------------------------------
    def watch(self) -> None:
        """Reload steps whenever a file under the steps directory changes."""
        self._tasks.append(asyncio.create_task(self._watch(), name="iii-watch"))

    async def _watch(self) -> None:
        from watchfiles import Change, awatch

        # Its "1 change detected" lines say nothing our config.reloaded event does not.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)

        def relevant(_change: Change, path: str) -> bool:
            return path.endswith(".py") and "__pycache__" not in path

        async for changes in awatch(self.config.steps_path, watch_filter=relevant, debounce=300, step=100):
            if self._stopping:
                return
            await self.reload(sorted({p for _c, p in changes}))

    async def reload(self, changed: list[str] | None = None) -> bool:
        """Swap in the steps as they are on disk now; keep the running ones if any file is broken."""
        assert self.services is not None
        emit = self.services.emitter.emit
        fresh = await asyncio.to_thread(discover, self.config.steps_path)
        if fresh.errors:
            for err in fresh.errors:
                emit("step.error", step=err.step, error=str(err), data={"file": err.file, "line": err.line, "field": err.field, "message": err.message})
                log.warning("step error: %s", err)  # headless: stderr, next to the start-up ones; console: .iii/logs/
            emit("config.reloaded", error=f"{len(fresh.errors)} step file(s) have errors; still running the previous version",
                 data={"ok": False, "changed": changed or [], "errors": [str(e) for e in fresh.errors]})
            return False
        self.steps = fresh
        self._publish_registry()
        if self.app is not None:
            runner = StepRunner(self.services, subscriptions_for(fresh.steps))
            runner._async = AsyncSide(self.services, runner._subs)
            old_app = self.app.app
            self.app.app = create_app(runner, fresh.http_steps(), max_body_bytes=self.config.server.max_body_bytes)
            retire = asyncio.create_task(self._retire(old_app), name="iii-retire")
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)
        if self.scheduler is not None or ("scheduler" in self.roles and fresh.cron_steps()):
            if self.scheduler is not None:
                await asyncio.to_thread(self.scheduler.stop)
                self.scheduler = None
            if fresh.cron_steps():
                runner = StepRunner(self.services, subscriptions_for(fresh.steps))
                self.scheduler = Scheduler(self.services, fresh.cron_steps(), runner.producer)
                self.scheduler.start()
        for child in self.children:
            # Rolling restart: the old process drains and requeues, then the new code takes over.
            child.reloading = True
            try:
                old, old_id = child.proc, child.worker_id
                if old.poll() is None:
                    old.send_signal(signal.SIGTERM)
                    while old.poll() is None:
                        await asyncio.sleep(0.05)
                if old.returncode not in (0, RECYCLE_EXIT) and not child.restarting:  # (the monitor recovered a crash it saw)
                    await self._recover(old_id, old.returncode)
                child.proc, child.worker_id = self._spawn(child.index)
                child.started = time.monotonic()
            finally:
                child.reloading = False
        emit("config.reloaded", data={"ok": True, "changed": changed or [], "steps": [s.name for s in fresh.steps]})
        return True

    def _spawn(self, index: int) -> tuple[subprocess.Popen[bytes], str]:
        """Start worker process ``index``; returns it and the worker id it runs under."""
        worker_id = str(uuid.uuid4())
        env = dict(os.environ)
        env.update(III_CONFIG_JSON=self.config.model_dump_json(), III_WORKER_INDEX=str(index), III_WORKER_THREADS=str(self.threads),
                   III_SUPERVISOR_PID=str(os.getpid()), III_WORKER_ID=worker_id)
        stderr: Any = None
        if self.log_dir is not None:
            stderr = open_private_log(private_dir(self.log_dir) / f"worker-{index}.log")
        try:
            return subprocess.Popen([sys.executable, "-m", "iii_console.runtime.worker"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=stderr, stderr=stderr, cwd=self.config.project_dir), worker_id
        finally:
            if stderr is not None:
                stderr.close()

    async def _sweep(self) -> None:
        from iii_console.adapters.queue.scripts import Scripts
        from iii_console.adapters.queue.sweep import sweep_dead_workers

        assert self.services is not None
        svc = self.services
        scripts = Scripts(svc.client)
        timeout_ms = int(self.config.workers.heartbeat_timeout * 1000)
        while not self._stopping:
            await asyncio.sleep(self.config.workers.sweep_interval)
            try:
                await asyncio.to_thread(sweep_dead_workers, svc.client, svc.keys, scripts, svc.emitter, timeout_ms=timeout_ms)
                # Again and again: a Redis that lost its data has lost the watched
                # groups too, and until they are back every change is recorded.
                await asyncio.to_thread(watch_state_triggers, svc.client, svc.keys, self.steps)
            except redis.RedisError as exc:
                log.warning("sweep: Redis unavailable: %s", exc)

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

        assert self.services is not None
        svc = self.services
        how = exit_description(code)
        delay = 0.1
        deadline = time.monotonic() + 10
        while True:
            try:
                return await asyncio.to_thread(recover_worker, svc.client, svc.keys, Scripts(svc.client), svc.emitter, worker_id,
                                               reason="crashed", **how)
            except redis.RedisError as exc:
                if self._stopping and time.monotonic() > deadline:
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
        assert self.services is not None
        while not self._stopping:
            for child in self.children:
                proc = child.proc
                code = proc.poll()
                if code is None or self._stopping or child.reloading or child.restarting:
                    continue
                child.restarting = True
                if code == RECYCLE_EXIT:
                    delay = 0.0  # it asked to be replaced (and its worker.stopped said why): not a crash
                else:
                    if code != 0:
                        await self._recover(child.worker_id, code)
                    delay = min(RESTART_BACKOFF_MAX_S, 0.5 * (2 ** min(child.restarts, 5))) if time.monotonic() - child.started < 10 else 0.2
                    self.services.emitter.emit("log", data={"level": "error", "message": f"worker process {proc.pid} exited with {code}; restarting in {delay:.1f}s"})
                task = asyncio.create_task(self._restart_later(child, proc, delay, counts=code != RECYCLE_EXIT), name="iii-restart")
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)
            await asyncio.sleep(0.05)

    async def _restart_later(self, child: Child, proc: subprocess.Popen[bytes], delay: float, *, counts: bool = True) -> None:
        try:
            await asyncio.sleep(delay)
            if self._stopping or child.proc is not proc or child.reloading:
                return  # a reload has replaced it meanwhile (or is doing so)
            child.proc, child.worker_id = self._spawn(child.index)
            child.started = time.monotonic()
            child.restarts += counts
        finally:
            child.restarting = False

    def _tail(self) -> None:
        """Feed ``on_event`` from the stream in its own thread.

        A slow reader of our stdout (a log shipper, a pager) then only delays this
        thread; the server, scheduler and workers never wait on it, and the events
        are in Redis regardless.
        """
        assert self.services is not None and self.on_event is not None
        client = redis_client(self.config.redis.url, socket_timeout=5)
        last = self._tail_from
        try:
            while True:
                try:
                    got = client.xread({self.services.keys.events: last}, count=500, block=200)
                except redis.RedisError:
                    if self._tail_done.is_set():
                        return
                    time.sleep(0.5)
                    continue
                for _stream, entries in got or []:
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        self.on_event(Event.decode(entry_id, fields))
                if got and hasattr(self.on_event, "flush"):
                    self.on_event.flush()  # once per batch read: a write per event would cost a syscall each
                if not got and self._tail_done.is_set():
                    return
        finally:
            client.close()

    # -- stop ---------------------------------------------------------------
    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self.server is not None:
            self.server.should_exit = True
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.workers.shutdown_timeout + 5
        for child in self.children:
            while child.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
            if child.proc.returncode not in (0, RECYCLE_EXIT) and not child.restarting and self.services is not None:
                await self._recover(child.worker_id, child.proc.returncode)
        if self.services is not None:
            await asyncio.to_thread(self.services.sink.flush)
        self._tail_done.set()
        if self._tail_thread is not None:
            await asyncio.to_thread(self._tail_thread.join, 10)
        for task in self._tasks:
            if task.get_name() == "iii-server":
                try:
                    await asyncio.wait_for(task, 15)
                except (asyncio.TimeoutError, Exception):
                    task.cancel()
            else:
                task.cancel()
        for task in list(self._retiring) + list(self._restarts):
            task.cancel()
        # The app being served now was never retired; its lifespan hooks only
        # exist (and have run) if it is the one the server started with.
        for gate, side in (_held(self.app.app) if self.app else (None, None), *self._unretired):
            await _close_quietly(gate, side)
        if self.services is not None:
            self.services.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)

    async def _retire(self, app: Any) -> None:
        """Stop a replaced app's depth gate and async clients once its last requests are done.

        Requests that started on the old app may still be awaiting Redis through
        them, so they are closed after a grace period, not at the swap.
        """
        entry = _held(app)
        self._unretired.append(entry)
        await asyncio.sleep(RETIRE_GRACE_S)
        self._unretired.remove(entry)
        await _close_quietly(*entry)

    @property
    def worker_codes(self) -> list[int | None]:
        return [c.proc.returncode for c in self.children]
