"""The run's shared pieces: options, the private Redis, the process list, paths."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import work
from bench.procs import Procs
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
            console_seconds=10.0,
            memory_messages=10_000,
        )
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


class Bench:
    """One private Redis (appendonly off) and every process of the run."""

    def __init__(self, options: Options):
        self.options = options
        self.tmp = Path(tempfile.mkdtemp(prefix="iii-bench-"))
        self.project_dir = self.tmp / "project"
        self.project_dir.mkdir()
        self.redis_server = RedisServer(self.tmp / "redis", appendonly=False)
        self.r: redis.Redis | None = None
        self.procs: Procs | None = None

    @property
    def url(self) -> str:
        return self.redis_server.url

    @property
    def redis(self) -> redis.Redis:
        assert self.r is not None
        return self.r

    def __enter__(self) -> Bench:
        self.redis_server.start()
        self.r = redis.Redis.from_url(self.url)
        # The peers' modules and the work function read the URL from the environment.
        os.environ["BENCH_REDIS_URL"] = self.url
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs = Procs(self.tmp / "logs", env)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.procs is not None:
                self.procs.stop_all()
        finally:
            if self.r is not None:
                self.r.close()
            self.redis_server.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)  # logs of failed processes are quoted in the error

    def flush(self) -> None:
        self.redis.flushall()

    def done(self) -> int:
        return int(self.redis.get(work.DONE) or 0)

    def drain_window(self) -> tuple[float, float] | None:
        first, last = self.redis.mget(work.FIRST, work.LAST)
        return (float(first), float(last)) if first and last else None

    def redis_version(self) -> str:
        return str(self.redis.info("server").get("redis_version", "?"))
