"""The supervisor's sweep: dead workers' messages back to their queues, on a timer.

Every worker sweeps too; the supervisor does as well because it outlives its
workers: a crashed worker's messages come back even while its replacement boots
(and those of a host that is gone, whatever roles this one runs). Each round also
registers the watched state groups again: a Redis that lost its data lost them too,
and until they are back every change is recorded.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from iii_console.core.discovery import StepSet
from iii_console.runtime.dispatcher import watch_state_triggers
from iii_console.runtime.services import Services

log = logging.getLogger(__name__)


class Sweeper:
    """Sweeps every ``workers.sweep_interval`` while entered."""

    def __init__(self, services: Services, steps: StepSet) -> None:
        self.services = services
        self.steps = steps
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sweeper:
        self._task = asyncio.create_task(self._run(), name="iii-sweep")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def reload(self, steps: StepSet) -> None:
        self.steps = steps

    async def _run(self) -> None:
        from iii_console.adapters.queue.scripts import Scripts
        from iii_console.adapters.queue.sweep import sweep_dead_workers

        svc = self.services
        scripts = Scripts(svc.client)
        workers = svc.config.workers
        while True:
            await asyncio.sleep(workers.sweep_interval)
            try:
                await asyncio.to_thread(sweep_dead_workers, svc.client, svc.keys, scripts, svc.emitter, workers=workers)
                await asyncio.to_thread(watch_state_triggers, svc.client, svc.keys, self.steps)
            except redis.RedisError as exc:
                log.warning("sweep: Redis unavailable: %s", exc)
