"""``iii_steps``, the fast mode: one handler run in the test's process with a real context."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from iii_console.core.context import CronTick, StateChange
from iii_console.core.events import now_ms
from iii_console.core.steps import CronTrigger, HttpTrigger, QueueTrigger, StateTrigger, validate_input
from iii_console.testing.project import _Project


class IIISteps(_Project):
    """The fast mode: one handler run in this process with a real context."""

    def __init__(self, project: Path, redis_url: str):
        super().__init__(project, redis_url)
        self._runner: Any = None
        self._services: Any = None

    def run(self, step: str, input: Any = None, *, trace_id: str | None = None, attempt: int = 1) -> Any:
        """Run ``step``'s handler on ``input`` and return its result; its exception propagates.

        ``input`` is what the step's trigger gives its handler: a queue step's data (validated as its
        trigger validates it); an HTTP step's request body (or an ``HttpRequest``); a cron step's
        ``CronTick`` (or its fields as a dict; none: a tick due and fired now); a state step's
        ``StateChange`` (or a dict of ``group``, ``key``, ``old`` and ``new``).
        """
        from iii_console.core.context import HttpRequest
        from iii_console.runtime.runner import LoopThread, make_runner
        from iii_console.runtime.services import Services

        found = self.step(step)
        if self._runner is None:
            self._services = Services.open(self.config, "test")
            self._runner = make_runner(self._services, self.steps, loop_thread=LoopThread())
        trigger: dict[str, Any] = {"type": "test"}
        value = input
        crons, states = found.of(CronTrigger), found.of(StateTrigger)
        # A tick or a change given as such; else, for a step without queue or HTTP triggers, what its own trigger gives.
        kind = "cron" if isinstance(input, CronTick) else "state" if isinstance(input, StateChange) else None
        if kind is None and not (found.of(QueueTrigger) or found.of(HttpTrigger)):
            kind = "state" if states else "cron"
        if crons and kind == "cron":
            value = _tick(input)
            trigger = {
                "type": "cron",
                "expression": crons[0].expression,
                "scheduled_ms": value.scheduled_ms,
                "fired_ms": value.fired_ms,
                "manual": value.manual,
            }
        elif states and kind == "state":
            value = _change(input)
            trigger = {"type": "state", "group": value.group, "key": value.key}
        elif queues := found.of(QueueTrigger):
            value = validate_input(queues[0].input_schema, input)
            trigger = {"type": "queue", "topic": queues[0].topic, "priority": "normal"}
        elif https := found.of(HttpTrigger):
            if not isinstance(input, HttpRequest):
                value = HttpRequest(
                    body=validate_input(https[0].body_schema, input),
                    path_params={},
                    query={},
                    headers={},
                    method=https[0].method,
                    path=https[0].path,
                )
            trigger = {"type": "http", "method": https[0].method, "path": https[0].path}
        try:
            return self._runner.call_sync(
                found,
                value,
                trace_id=trace_id or uuid.uuid4().hex,
                attempt=attempt,
                trigger=trigger,
                message_id=str(uuid.uuid4()),
            )
        finally:
            self._services.sink.flush()

    def stop(self) -> None:
        if self._runner is not None and self._runner.loop_thread is not None:
            self._runner.loop_thread.stop()
        if self._services is not None:
            self._services.close()
        self.close()


def _tick(input: Any) -> CronTick:
    """A cron step's input: a ``CronTick``, its fields as a dict, or none (a tick due and fired now)."""
    if isinstance(input, CronTick):
        return input
    if input is None:
        now = now_ms()
        return CronTick(scheduled_ms=now, fired_ms=now)
    try:
        return CronTick(**input)
    except TypeError as exc:
        raise ValueError(f"a cron step's input is a CronTick or a dict of scheduled_ms, fired_ms and manual: {exc}") from None


def _change(input: Any) -> StateChange:
    """A state step's input: a ``StateChange``, or a dict of ``group``, ``key``, ``old`` and ``new``."""
    if isinstance(input, StateChange):
        return input
    try:
        return StateChange(**input)
    except TypeError as exc:
        raise ValueError(f"a state step's input is a StateChange or a dict of group, key, old and new: {exc}") from None
