"""``iii_steps``, the fast mode: one handler run in the test's process with a real context."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from iii_console.core.steps import HttpTrigger, QueueTrigger, validate_input
from iii_console.testing.project import _Project


class IIISteps(_Project):
    """The fast mode: one handler run in this process with a real context."""

    def __init__(self, project: Path, redis_url: str):
        super().__init__(project, redis_url)
        self._runner: Any = None
        self._services: Any = None

    def run(self, step: str, input: Any = None, *, trace_id: str | None = None, attempt: int = 1) -> Any:
        """Run ``step``'s handler on ``input`` (validated as its queue trigger validates it; for an HTTP
        step a request body, or an ``HttpRequest``) and return its result; its exception propagates."""
        from iii_console.core.context import HttpRequest
        from iii_console.runtime.runner import LoopThread, make_runner
        from iii_console.runtime.services import Services

        found = self.step(step)
        if self._runner is None:
            self._services = Services.open(self.config, "test")
            self._runner = make_runner(self._services, self.steps, loop_thread=LoopThread())
        trigger: dict[str, Any] = {"type": "test"}
        value = input
        if queues := found.of(QueueTrigger):
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
