"""``iii_app``: the project running as ``iii-console --no-ui`` on the private Redis."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from iii_console.core.steps import CronTrigger
from iii_console.testing.project import StepFailed, _Project


class IIIApp(_Project):
    """The project running as ``iii-console --no-ui`` on the private Redis."""

    def __init__(self, project: Path, redis_url: str):
        super().__init__(project, redis_url)
        self.url = ""
        self.stderr: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._http: httpx.Client | None = None
        self._services: Any = None

    def start(self, timeout: float = 60.0) -> IIIApp:
        cmd = [
            sys.executable,
            "-m",
            "iii_console",
            "--no-ui",
            "--port",
            "0",
            "--redis",
            self.config.redis.url,
            "--config",
            str(self.project / "iii-config.yaml"),
        ]
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
        threading.Thread(
            target=lambda: self.stderr.extend(iter(self._proc.stderr.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        ).start()
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
        from iii_console.runtime.runner import make_runner
        from iii_console.runtime.services import Services

        if topic not in self.steps.topics:
            raise StepFailed(f"no step subscribes to {topic!r} (topics: {', '.join(self.steps.topics) or 'none'})")
        if self._services is None:
            self._services = Services.open(self.config, "test")
        trace_id = uuid.uuid4().hex
        make_runner(self._services, self.steps).producer.enqueue(topic, data, trace_id=trace_id, priority=priority, source="test")
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
        from iii_console.runtime.brokers import fire_cron_now

        trace_id, _mid = fire_cron_now(
            self.redis,
            self.keys,
            self._services.emitter,
            self.config,
            found.name,
            crons[0].expression,
            priority=self.config.queue(f"_cron.{found.name}").priority,
            source="test",
        )
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
