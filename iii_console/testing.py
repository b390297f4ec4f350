"""Testing helpers for your steps: a pytest plugin (entry point ``pytest11``).

Installed with iii-console, it gives every test these fixtures:

``iii_app``
    your project running for real (``iii-console --no-ui``: HTTP server, worker
    processes, scheduler) against a private redis-server started for the test
    session, on a database emptied before each test. ``post``, ``enqueue``,
    ``wait_for``, ``events``, ``state``, ``run_cron``, ``dead_letters``.
``iii_steps``
    the fast mode: ``iii_steps.run(STEP, input)`` runs one step's handler in the
    test's own process with a real context (state, enqueue, events on the same
    private Redis) and returns what it returns, or raises what it raises.

The project is the folder of ``iii-config.yaml`` in pytest's rootdir, or the
``iii_project`` ini option (a path relative to the rootdir).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from iii_console.core.config import Config, load_config
from iii_console.core.cronrun import run_now
from iii_console.core.discovery import StepSet, discover
from iii_console.core.dlq import DeadLetter, DeadLetterStore
from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer
from iii_console.core.state import StateStore
from iii_console.core.steps import CronTrigger, HttpTrigger, QueueTrigger, Step, validate_input

__all__ = ["IIIApp", "IIISteps", "StepFailed"]


class StepFailed(AssertionError):
    """What a test waited for did not happen: the project's own errors are in the message."""


def _load(project: Path, redis_url: str) -> Config:
    return load_config(project / "iii-config.yaml", env={}).with_overrides(**{"redis.url": redis_url})


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
            self._steps = discover(self.config.steps_path)
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

    def wait_for(self, type: str, *, step: str | None = None, trace: str | None = None, count: int = 1,
                 timeout: float = 15.0) -> Event:
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
                raise StepFailed(f"timed out after {timeout}s waiting for {type}"
                                 f"{f' of step {step}' if step else ''}{f' on trace {trace}' if trace else ''}{why}")
            time.sleep(0.05)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """Dead letters of ``queue`` (a dead-letter queue's name), or of every one."""
        return DeadLetterStore(self.redis, self.keys).list(queue)

    def close(self) -> None:
        self.redis.close()


class IIIApp(_Project):
    """The project running as ``iii-console --no-ui`` on the private Redis."""

    def __init__(self, project: Path, redis_url: str):
        super().__init__(project, redis_url)
        self.url = ""
        self.stderr: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._http: httpx.Client | None = None
        self._services: Any = None

    def start(self, timeout: float = 60.0) -> "IIIApp":
        cmd = [sys.executable, "-m", "iii_console", "--no-ui", "--port", "0", "--redis", self.config.redis.url,
               "--config", str(self.project / "iii-config.yaml")]
        self._proc = subprocess.Popen(cmd, cwd=self.project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(timeout, self._proc.kill)
        timer.start()
        try:
            banner = self._proc.stderr.readline()  # type: ignore[union-attr]
        finally:
            timer.cancel()
        if "running" not in banner:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            rest = self._proc.stderr.read()  # type: ignore[union-attr]
            raise StepFailed(f"iii-console did not start: {(banner + rest).strip()}")
        threading.Thread(target=lambda: self.stderr.extend(iter(self._proc.stderr.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()
        found = re.search(r"on (http://\S+) with", banner)
        self.url = found.group(1) if found else ""
        headers = {"authorization": f"Bearer {self.config.server.auth_token}"} if self.config.server.auth_token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=30) if self.url else None
        return self

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        """``POST`` to the running server (``request`` for other methods)."""
        return self.request("POST", path, json=json, **kw)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self._http is None:
            raise StepFailed("the project serves no HTTP step (no server is running)")
        return self._http.request(method, path, **kw)

    def enqueue(self, topic: str, data: Any, *, priority: str | None = None) -> str:
        """Put ``data`` on ``topic`` as a step's ``ctx.enqueue`` would; returns the trace id."""
        from iii_console.adapters.queue.producer import subscriptions_for
        from iii_console.runtime.runner import StepRunner
        from iii_console.runtime.services import Services

        subs = subscriptions_for(self.steps.steps)
        if topic not in subs:
            raise StepFailed(f"no step subscribes to {topic!r} (topics: {', '.join(self.steps.topics) or 'none'})")
        if self._services is None:
            self._services = Services.open(self.config, "test")
        trace_id = uuid.uuid4().hex
        StepRunner(self._services, subs).producer.enqueue(topic, data, trace_id=trace_id, priority=priority, source="test")
        self._services.sink.flush()
        return trace_id

    def run_cron(self, step: str) -> str:
        """Fire cron step ``step`` now (as ``iii-console cron run``); returns the trace id."""
        found = self.step(step)
        crons = found.of(CronTrigger)
        if not crons:
            raise StepFailed(f"step {step!r} has no cron trigger")
        from iii_console.runtime.services import Services

        if self._services is None:
            self._services = Services.open(self.config, "test")
        trace_id, _mid = run_now(self.redis, self.keys, self._services.emitter, found.name, crons[0].expression,
                                 priority=self.config.queue(f"_cron.{found.name}").priority, source="test")
        return trace_id

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._services is not None:
            self._services.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(40)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self.close()


class IIISteps(_Project):
    """The fast mode: one handler run in this process with a real context."""

    def __init__(self, project: Path, redis_url: str):
        super().__init__(project, redis_url)
        self._runner: Any = None
        self._services: Any = None

    def run(self, step: str, input: Any = None, *, trace_id: str | None = None, attempt: int = 1) -> Any:
        """Run ``step``'s handler on ``input`` (validated as its queue trigger validates it; for an HTTP
        step a request body, or an ``HttpRequest``) and return its result; its exception propagates."""
        from iii_console.adapters.queue.producer import subscriptions_for
        from iii_console.core.context import HttpRequest
        from iii_console.runtime.runner import LoopThread, StepRunner
        from iii_console.runtime.services import Services

        found = self.step(step)
        if self._runner is None:
            self._services = Services.open(self.config, "test")
            self._runner = StepRunner(self._services, subscriptions_for(self.steps.steps), loop_thread=LoopThread())
        trigger: dict[str, Any] = {"type": "test"}
        value = input
        if queues := found.of(QueueTrigger):
            value = validate_input(queues[0].input_schema, input)
            trigger = {"type": "queue", "topic": queues[0].topic, "priority": "normal"}
        elif https := found.of(HttpTrigger):
            if not isinstance(input, HttpRequest):
                value = HttpRequest(body=validate_input(https[0].body_schema, input), path_params={}, query={}, headers={}, method=https[0].method, path=https[0].path)
            trigger = {"type": "http", "method": https[0].method, "path": https[0].path}
        try:
            return self._runner.call_sync(found, value, trace_id=trace_id or uuid.uuid4().hex, attempt=attempt, trigger=trigger,
                                          message_id=str(uuid.uuid4()))
        finally:
            self._services.sink.flush()

    def stop(self) -> None:
        if self._runner is not None and self._runner.loop_thread is not None:
            self._runner.loop_thread.stop()
        if self._services is not None:
            self._services.close()
        self.close()


# -- the pytest plugin ------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("iii_project", "folder of the iii-console project under test (default: the rootdir)", default="")


@pytest.fixture(scope="session")
def iii_project(pytestconfig: pytest.Config) -> Path:
    """The project under test: the ``iii_project`` ini option, else pytest's rootdir."""
    root = Path(pytestconfig.rootpath)
    given = str(pytestconfig.getini("iii_project") or "")
    project = (root / given).resolve() if given else root
    if not (project / "iii-config.yaml").exists() and not (project / "steps").is_dir():
        raise pytest.UsageError(f"{project} has no iii-config.yaml or steps/: set the iii_project ini option")
    return project


@pytest.fixture(scope="session")
def iii_redis() -> Iterator[RedisServer]:
    """A private redis-server for the test session (not the project's embedded one, never a shared one)."""
    with tempfile.TemporaryDirectory(prefix="iii-test-redis-") as data:
        server = RedisServer(data, appendonly=False).start()
        try:
            yield server
        finally:
            server.stop()


def _clean(server: RedisServer) -> str:
    client = redis.Redis.from_url(server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return server.url


@pytest.fixture
def iii_app(iii_project: Path, iii_redis: RedisServer) -> Iterator[IIIApp]:
    """The project running for real (server, workers, scheduler) on an emptied private Redis."""
    app = IIIApp(iii_project, _clean(iii_redis)).start()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def iii_steps(iii_project: Path, iii_redis: RedisServer) -> Iterator[IIISteps]:
    """Run one step's handler in the test's process with a real context on an emptied private Redis."""
    steps = IIISteps(iii_project, _clean(iii_redis))
    try:
        yield steps
    finally:
        steps.stop()
