"""One supervisor per ``iii-console`` invocation: it enters the roles this one runs.

Each role owns its lifecycle (a context manager, with ``reload(steps)``):
the Redis it uses (the embedded one, started or joined, with its watchdog), the
event echo (``echo.py``), the sweep (``sweeper.py``), the worker pool
(``pool.py``: queue workers as child processes, so a CPU-bound handler never
freezes the server or the console and a crashed worker is restarted), the
scheduler (``scheduler.CronScheduler``) and the HTTP server
(``http_server.py``). They are entered through one ``AsyncExitStack`` in the
reverse of the shutdown order, so a stop, or a failed start, leaves them in
that order: stop accepting HTTP, stop the scheduler, SIGTERM the workers (they
drain and requeue), read the last events, stop Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack, nullcontext
from pathlib import Path
from typing import Any

from iii_console.core.config import Config
from iii_console.core.connection import check_redis
from iii_console.core.discovery import StepSet, discover, emit_step_error
from iii_console.runtime.dispatcher import watch_state_triggers
from iii_console.runtime.echo import EchoCommand, EventEcho
from iii_console.runtime.embedded import EmbeddedRedis
from iii_console.runtime.http_server import RETIRE_GRACE_S, HttpServer, listen
from iii_console.runtime.pool import Child, WorkerPool, exit_description  # noqa: F401  (part of this module's names)
from iii_console.runtime.redis_watchdog import RedisWatchdog
from iii_console.runtime.scheduler import CronScheduler
from iii_console.runtime.services import Services, open_services
from iii_console.runtime.startup import SlowImports, interruptible
from iii_console.runtime.sweeper import Sweeper

log = logging.getLogger(__name__)
ROLES = ("server", "worker", "scheduler")


def resolve_redis(config: Config) -> tuple[Config, EmbeddedRedis | None]:
    """Use the configured Redis, or start (or join) the project's embedded one."""
    if config.redis.url:
        return config, None
    emb = EmbeddedRedis(config.data_dir, maxmemory=config.redis.maxmemory, appendfsync=config.redis.appendfsync)
    url = emb.start()
    return config.with_overrides(**{"redis.url": url}), emb


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        roles: tuple[str, ...] = ROLES,
        processes: int | None = None,
        threads: int | None = None,
        echo: EchoCommand | None = None,
        log_dir: Path | None = None,
        say: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.roles = roles
        self.processes = processes or config.workers.processes
        self.threads = threads or config.workers.threads
        #: The event echo's process (headless runs), or none.
        self.echo = echo
        #: When set (the interactive console owns the terminal), worker processes'
        #: stderr goes to ``log_dir/worker-N.log`` instead of the screen.
        self.log_dir = log_dir
        #: Where a start tells a person what it is waiting for (a slow step import), or nowhere.
        self.say = say
        self.embedded: EmbeddedRedis | None = None
        self.steps = StepSet()
        self.services: Services | None = None
        self.server: HttpServer | None = None
        self.pool: WorkerPool | None = None
        self.scheduler: CronScheduler | None = None
        self.sweeper: Sweeper | None = None
        #: The copier of RabbitMQ queue depths into Redis (``broker: rabbitmq``), for the console.
        self.depths: Any = None
        self._stack = AsyncExitStack()
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    # -- start --------------------------------------------------------------
    async def start(self) -> None:
        try:
            # Most of a start blocks the loop (Redis, the steps' imports): a Ctrl+C stops it there, not after.
            with interruptible():
                await self._enter(self._stack)
        except BaseException:
            await self.stop()
            raise

    async def _enter(self, stack: AsyncExitStack) -> None:
        """Enter every role, the last to stop first."""
        from iii_console.adapters.queue.delays import migrate_legacy_delay_queues

        sock = None
        if "server" in self.roles:
            # Bound before anything is started or written: a second `iii-console` in the same project stops
            # here ("address already in use"), before its workers start (and, stopped, are reported as
            # crashed in the first one's console) or its registry replaces the first one's.
            sock = listen(self.config)
            bound = sock
            stack.callback(lambda: None if self.server is not None else bound.close())  # the server closes its own
        self.config, self.embedded = resolve_redis(self.config)
        if self.embedded is not None:
            stack.push_async_callback(asyncio.to_thread, self.embedded.stop)
        check_redis(self.config.redis.url)
        self.services = services = open_services(self.config, "supervisor", traced="server" in self.roles)
        stack.callback(services.close)
        if self.echo is not None:
            stack.enter_context(EventEcho(services, self.echo))
        with SlowImports(self.say, self.config.steps_path) if self.say is not None else nullcontext() as on_file:
            self.steps = discover(self.config.steps_path, self.config.project_dir, on_file=on_file)
        for err in self.steps.errors:
            emit_step_error(services.emitter, err)
        self._publish_registry()
        if moved := migrate_legacy_delay_queues(services.client, services.keys):
            log.warning("moved %d delayed message(s) from an older version's delay queues", moved)
        if self.embedded is not None and self.embedded.owned:
            watchdog = RedisWatchdog(self.embedded, services.emitter.emit, stopping=lambda: self._stopping)
            task = asyncio.create_task(watchdog.run(), name="iii-redis-watchdog")
            stack.callback(task.cancel)
        self.sweeper = await stack.enter_async_context(Sweeper(services, self.steps))
        if self.config.broker == "rabbitmq":
            from iii_console.adapters.queue.rmq_watch import DepthMirror

            self.depths = stack.enter_context(
                DepthMirror(
                    self.config.rabbitmq.url,
                    self.config.rabbitmq.prefix,
                    services.client,
                    services.keys,
                    self._subscriptions(),
                )
            )
        if "worker" in self.roles:
            self.pool = await stack.enter_async_context(
                WorkerPool(
                    self.config,
                    services,
                    processes=self.processes,
                    threads=self.threads,
                    log_dir=self.log_dir,
                    stopping=lambda: self._stopping,
                )
            )
        if "scheduler" in self.roles:
            self.scheduler = await stack.enter_async_context(CronScheduler(services, self.steps))
        if "server" in self.roles:
            self.server = await stack.enter_async_context(
                HttpServer(self.config, services, self.steps, retire_grace_s=RETIRE_GRACE_S, sock=sock)
            )

    def _publish_registry(self) -> None:
        assert self.services is not None
        c, k = self.services.client, self.services.keys
        pipe = c.pipeline()
        pipe.delete(k.steps_registry, k.queues_registry)
        pipe.hset(k.deployment_registry, "broker", self.config.broker)
        for s in self.steps.steps:
            pipe.hset(k.steps_registry, s.name, json.dumps(s.describe()))
        for t in sorted(set(self.steps.topics) | {"default"}):
            pipe.hset(k.queues_registry, t, self.config.queue(t).model_dump_json())
        pipe.execute()
        # Before anything of this version can change state: changes to the groups
        # its state steps watch are recorded from now on, and fire once a worker runs.
        watch_state_triggers(c, k, self.steps)

    def _subscriptions(self) -> list[Any]:
        """Every (topic, step) subscription of the current steps, cron and state steps' own included."""
        from iii_console.adapters.queue.producer import subscriptions_for

        return [s for subs in subscriptions_for(self.steps.steps).values() for s in subs]

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    @property
    def children(self) -> list[Child]:
        return self.pool.children if self.pool is not None else []

    @property
    def worker_codes(self) -> list[int | None]:
        return self.pool.codes if self.pool is not None else []

    # -- hot reload ---------------------------------------------------------
    def watch(self) -> None:
        """Reload steps whenever a file under the steps directory changes."""
        self._watch = asyncio.create_task(self._watch_files(), name="iii-watch")

    async def _watch_files(self) -> None:
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
                emit_step_error(self.services.emitter, err)
                log.warning("step error: %s", err)  # headless: stderr, next to the start-up ones; console: .iii/logs/
            emit(
                "config.reloaded",
                error=f"{len(fresh.errors)} step file(s) have errors; still running the previous version",
                data={"ok": False, "changed": changed or [], "errors": [str(e) for e in fresh.errors]},
            )
            return False
        self.steps = fresh
        self._publish_registry()
        if self.sweeper is not None:
            self.sweeper.reload(fresh)
        if self.depths is not None:
            self.depths.reload(self._subscriptions())
        if self.server is not None:
            await self.server.reload(fresh)
        if self.scheduler is not None:
            await self.scheduler.reload(fresh)
        if self.pool is not None:
            await self.pool.reload(fresh)
        emit("config.reloaded", data={"ok": True, "changed": changed or [], "steps": [s.name for s in fresh.steps]})
        return True

    def kill_children(self) -> None:
        """SIGKILL the worker processes (a forced stop): what they held is recovered as after a crash."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()

    # -- stop ---------------------------------------------------------------
    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        await self._stack.aclose()
