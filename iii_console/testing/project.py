"""What both fixtures share: the project's config, steps, events, state and dead letters on the private Redis."""

from __future__ import annotations

import os
import time
from pathlib import Path

import redis

from iii_console.core.config import Config, load_config, read_dotenv
from iii_console.core.discovery import StepSet, discover
from iii_console.core.dlq import DeadLetter, DeadLetterStore
from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.core.state import StateStore
from iii_console.core.steps import Step


class StepFailed(AssertionError):
    """What a test waited for did not happen: the project's own errors are in the message."""


def _load(project: Path, redis_url: str) -> Config:
    """The project's config as the ``iii-console`` the fixtures start reads it (the environment, then the
    project's ``.env`` under it: an ``auth_token`` or ``redis.prefix`` from there), on the tests' Redis."""
    dotenv = project / ".env"
    env = {**(read_dotenv(dotenv) if dotenv.is_file() else {}), **os.environ}
    env.pop("REDIS_URL", None)  # the tests' private Redis, whatever the shell points at
    return load_config(project / "iii-config.yaml", env=env).with_overrides(**{"redis.url": redis_url})


class _Project:
    """What both fixtures share: the project's config, steps and clients on the private Redis."""

    def __init__(self, project: Path, redis_url: str):
        self.project = project
        self.config = _load(project, redis_url)
        self.keys = Keys(self.config.redis.prefix)
        self.redis = redis.Redis.from_url(redis_url)
        self.state = StateStore(self.redis, self.keys)
        self._steps: StepSet | None = None

    @property
    def steps(self) -> StepSet:
        if self._steps is None:
            self._steps = discover(self.config.steps_path, self.config.project_dir)
            if self._steps.errors:
                raise StepFailed("steps failed to load: " + "; ".join(str(e) for e in self._steps.errors))
        return self._steps

    def step(self, name: str) -> Step:
        found = next((s for s in self.steps.steps if s.name == name), None)
        if found is None:
            raise StepFailed(f"no step named {name!r} (steps: {', '.join(s.name for s in self.steps.steps)})")
        return found

    def events(self, type: str | None = None, *, step: str | None = None, trace: str | None = None) -> list[Event]:
        """Every event on the stream so far that matches (``type`` ending in ``.`` matches a family)."""
        out = []
        for entry_id, fields in self.redis.xrange(self.keys.events):
            ev = Event.decode(entry_id, fields)
            if type and not (ev.type == type or (type.endswith(".") and ev.type.startswith(type))):
                continue
            if (step and ev.step != step) or (trace and ev.trace_id != trace):
                continue
            out.append(ev)
        return out

    def wait_for(
        self, type: str, *, step: str | None = None, trace: str | None = None, count: int = 1, timeout: float = 15.0
    ) -> Event:
        """The ``count``-th event of ``type`` (for ``step``, on ``trace``); fails the test after ``timeout``.

        With ``trace``, fails at once, with the step's error, when that trace's message is
        dead-lettered instead.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.events(type, step=step, trace=trace)
            if len(got) >= count:
                return got[count - 1]
            if trace and type != "message.dead_lettered":
                dead = self.events("message.dead_lettered", step=step, trace=trace)
                if dead:
                    raise StepFailed(f"waiting for {type}: step {dead[0].step} dead-lettered its message: {dead[0].error}")
            if time.monotonic() > deadline:
                seen = self.events("message.failed", step=step, trace=trace) + self.events("step.error", step=step)
                why = f"; errors: {'; '.join(f'{e.step}: {e.error}' for e in seen[-3:])}" if seen else ""
                raise StepFailed(
                    f"timed out after {timeout}s waiting for {type}"
                    f"{f' of step {step}' if step else ''}{f' on trace {trace}' if trace else ''}{why}"
                )
            time.sleep(0.05)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Dead letters of ``queue`` (a dead-letter queue's name), or of every one."""
        return DeadLetterStore(self.redis, self.keys).list(queue)

    def close(self) -> None:
        self.redis.close()
