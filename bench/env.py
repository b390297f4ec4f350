"""The run's shared pieces: options, the private Redis, the process list, paths."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import work
from bench.procs import Procs, cpu_seconds
from iii_console.core.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BENCH_STEPS = ROOT / "bench" / "project" / "steps"
SEED_STEPS = ROOT / "steps"
PY = sys.executable


@dataclass
class Options:
    quick: bool = False
    rounds: int = 3
    only: list[str] = field(default_factory=list)
    #: Scenario 1 message count (20,000; quick: 4,000).
    messages: int = 20_000
    #: HTTP load duration per contender, seconds.
    http_seconds: float = 10.0
    #: Scenario 3: steady rate and duration.
    latency_rate: int = 200
    latency_seconds: float = 15.0
    priority_backlog: int = 5_000
    priority_trials: int = 5
    console_rate: int = 5_000
    console_seconds: float = 60.0
    memory_messages: int = 100_000
    #: ``ceiling``: worker processes (× 8 threads) per drain, rising.
    ceiling_processes: tuple[int, ...] = (1, 2, 4, 6)
    #: ``knee``: the rates tried in turn (messages/s) and how long each is held.
    knee_rates: tuple[int, ...] = (25, 50, 100, 150, 200, 250, 300, 400, 600, 800)
    knee_seconds: float = 10.0

    @classmethod
    def quick_mode(cls, **kw: object) -> Options:
        base = dict(
            quick=True,
            rounds=1,
            messages=4_000,
            http_seconds=3.0,
            latency_seconds=4.0,
            priority_backlog=2_000,
            priority_trials=2,
            console_seconds=30.0,
            memory_messages=10_000,
            ceiling_processes=(1, 2, 4),
            knee_rates=(25, 50, 100, 200, 300, 400, 600),
            knee_seconds=4.0,
        )
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so every finally stops its processes


def stop_on_sigterm() -> None:
    """A SIGTERM ends the run the way Ctrl+C does: every ``finally`` runs, so the private Redis,
    the workers and the servers it started are stopped, not left running without it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


class Bench:
    """One private Redis (appendonly off) and every process of the run."""

    def __init__(self, options: Options):
        self.options = options
        self.tmp = Path(tempfile.mkdtemp(prefix="iii-bench-"))
        self.project_dir = self.tmp / "project"
        self.project_dir.mkdir()
        self.redis_server = RedisServer(self.tmp / "redis", appendonly=False)
        self.r: redis.Redis | None = None
        self._procs: Procs | None = None
        self._rabbit: Any = None
        self._rabbit_error: str | None = None

    @property
    def url(self) -> str:
        return self.redis_server.url

    @property
    def redis(self) -> redis.Redis:
        assert self.r is not None
        return self.r

    @property
    def procs(self) -> Procs:
        """Every process of the run (set on entering the run)."""
        assert self._procs is not None
        return self._procs

    def __enter__(self) -> Bench:
        stop_on_sigterm()  # the side tools (python -m bench.switches, ...) as well as the harness
        self.redis_server.start()
        self.r = redis.Redis.from_url(self.url)
        # The peers' modules and the work function read the URL from the environment.
        os.environ["BENCH_REDIS_URL"] = self.url
        env = {
            **os.environ,
            # A PYTHONPATH of the caller's comes first: an older checkout on it is the code measured.
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
            # And nothing comes before it: without this, ``python -m`` puts the working directory
            # first on the path, so a process started in this checkout (the console's driver) ran
            # this checkout's ``iii_console`` whatever PYTHONPATH said.
            "PYTHONSAFEPATH": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self._procs = Procs(self.tmp / "logs", env)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._procs is not None:
                self._procs.stop_all()
            if self._rabbit is not None:
                self._rabbit.stop()
        finally:
            if self.r is not None:
                self.r.close()
            self.redis_server.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)  # logs of failed processes are quoted in the error

    def flush(self) -> None:
        self.redis.flushall()

    def redis_cpu_s(self) -> float:
        """The run's Redis server's CPU time so far (``INFO cpu``: user + system), seconds."""
        info = self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def done(self) -> int:
        return int(self.redis.get(work.DONE) or 0)

    def drain_window(self) -> tuple[float, float] | None:
        first, last = self.redis.mget(work.FIRST, work.LAST)
        return (float(first), float(last)) if first and last else None

    def rabbit(self) -> Any:
        """The run's private RabbitMQ node (started on first use, stopped with the run), or None.

        None when ``rabbitmq-server`` is not installed or the node would not start;
        :meth:`rabbit_skipped` then says why. The node has its own ports, name, data
        directory, cookie and HOME (``tests/rabbitnode.py``); the system's node is never used.
        """
        if self._rabbit is None and self._rabbit_error is None:
            from tests.rabbitnode import RabbitNode, rabbit_bin

            if rabbit_bin("rabbitmq-server") is None:
                self._rabbit_error = "rabbitmq-server is not installed"
                return None
            node = RabbitNode(self.tmp / "rabbitmq")
            try:
                node.start(timeout=120)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                try:
                    node.stop()
                except (OSError, subprocess.SubprocessError):
                    pass
                self._rabbit_error = f"the RabbitMQ node did not start: {str(exc)[:300]}"
                return None
            self._rabbit = node
            os.environ["BENCH_RABBITMQ_URL"] = node.url
            self.procs.env["BENCH_RABBITMQ_URL"] = node.url
        return self._rabbit

    def rabbit_skipped(self) -> str | None:
        """Why there is no RabbitMQ node (None when there is one or none was asked for yet)."""
        return self._rabbit_error

    def rabbit_cpu_s(self) -> float:
        """CPU seconds of the RabbitMQ node's processes (beam.smp and its helpers)."""
        node = self._rabbit
        if node is None or node.pid is None:
            return 0.0
        try:
            root = psutil.Process(node.pid)
            return cpu_seconds([root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            return 0.0

    def redis_version(self) -> str:
        return str(self.redis.info("server").get("redis_version", "?"))
