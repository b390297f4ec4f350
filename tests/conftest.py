"""Fixtures: one real redis-server per test session, a clean database per test; projects,
workers and producers on it; the command line run for real; events written as the runtime does.

The runtime's modules are imported inside the fixtures that use them, so a run of the
core's tests does not load Dramatiq.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer

from .helpers import E2E_CONFIG, Running, make_project, start_cli

ROOT = Path(__file__).resolve().parent.parent

# REDIS_URL overrides a project's redis.url, so a developer's own would send the
# commands the tests start to their Redis instead of the test's.
for _var in ("REDIS_URL", "III_CONFIG"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    c = redis.Redis.from_url(redis_server.url)
    c.flushall()
    c.close()
    return redis_server.url


@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def rc(app, redis_server):
    """A client of the Redis a module's ``app`` fixture (a running ``iii-console``) serves on."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def seed_project(tmp_path, redis_url):
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    make_project(tmp_path, {}, E2E_CONFIG, redis_url=redis_url)
    return tmp_path


@pytest.fixture
def running(seed_project):
    started: list[Running] = []

    def start(*args: str) -> Running:
        run = start_cli(seed_project, "--no-ui", *args)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


@pytest.fixture
def project(tmp_path, redis_url):
    """``build(steps, config)``: a project under tmp_path on the test's Redis, its steps loaded without errors."""
    from iii_console.core.discovery import discover

    def build(steps: dict[str, str], config: str = ""):
        cfg = make_project(tmp_path, steps, config, redis_url=redis_url)
        stepset = discover(cfg.steps_path)
        assert not stepset.errors, stepset.errors
        return cfg, stepset

    return build


@pytest.fixture
def runtime():
    """``start(cfg, steps, **kw)``: an in-process WorkerRuntime, stopped after the test."""
    from iii_console.runtime.worker import WorkerRuntime

    started: list[WorkerRuntime] = []

    def start(cfg, steps, **kw):
        rt = WorkerRuntime(cfg, steps, **kw)
        rt.start()
        started.append(rt)
        return rt

    yield start
    for rt in started:
        if not rt._stop.is_set():
            rt.stop(timeout_s=5)


@pytest.fixture
def producer():
    """``make(cfg, steps)``: the producer a step runner enqueues with, its clients closed after the test."""
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.services import Services
    from iii_console.runtime.runner import StepRunner

    opened: list[Services] = []

    def make(cfg, steps):
        svc = Services.open(cfg, "test")
        opened.append(svc)
        return StepRunner(svc, subscriptions_for(steps.steps)).producer

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def emit(r: redis.Redis, keys: Keys) -> Iterator[Any]:
    """Write events the way the runtime does: an Emitter over the batching StreamSink."""
    from iii_console.core.emitter import Emitter, StreamSink

    sink = StreamSink(r, keys.events)
    emitter = Emitter(sink.put, worker="test-host:1:worker0")

    def write(events: list[Event]) -> None:
        for ev in events:
            emitter.emit(ev.type, **{k: v for k, v in ev.as_dict().items() if k not in ("type", "id", "worker")})
        assert sink.flush()

    yield write
    sink.close()


@pytest.fixture
def anyio_backend() -> str:
    """The console tests run on asyncio."""
    return "asyncio"


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Wall-clock renderings (HH:MM:SS) in UTC, so they read the same on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL database of this test module's own (``iii_test_<random>``), dropped afterwards.

    The server is ``III_TEST_POSTGRES_URL``, else ``postgresql://postgres@127.0.0.1:5432/postgres``;
    the test is skipped, saying why, when psycopg is missing or no server answers.
    """
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the examples extra)")
    admin = os.environ.get("III_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {admin.split('@')[-1]} (set III_TEST_POSTGRES_URL): {str(exc).strip()[:200]}")
    name = f"iii_test_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        # Connections the test left (a killed worker's, a pool's) would block a plain DROP.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                     (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()
