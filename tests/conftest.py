"""Fixtures: one real redis-server per test session, a clean database per test; projects,
workers and producers on it; the command line run for real; events written as the runtime does.

The runtime's modules are imported inside the fixtures that use them, so a run of the
core's tests does not load Dramatiq.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer
from iii_console.core.state import AsyncStateStore, StateStore

from .helpers import E2E_CONFIG, ROOT, Running, make_project, start_cli

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
    """The worker's Redis, emptied: no keys and, as after a restart, no scripts loaded (a script an
    earlier test loaded must not hide a path that never loads its own)."""
    c = redis.Redis.from_url(redis_server.url)
    c.flushall()
    c.script_flush()
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
def project(tmp_path, redis_url, broker):
    """``build(steps, config)``: a project under tmp_path on the test's Redis and broker (see ``broker``),
    its steps loaded without errors."""
    import textwrap

    from iii_console.core.discovery import discover

    def build(steps: dict[str, str], config: str = ""):
        cfg = make_project(tmp_path, steps, textwrap.dedent(config) + broker, redis_url=redis_url)
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


class _Awaited:
    """An :class:`AsyncStateStore` called like the sync one: each call is awaited on a loop
    thread of its own, so one test body drives both stores (threads calling at once run
    their coroutines concurrently on that loop)."""

    def __init__(self, store: AsyncStateStore, loop: asyncio.AbstractEventLoop) -> None:
        self._store, self._loop = store, loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name == "bind":
            return lambda **kw: _Awaited(attr(**kw), self._loop)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **kw: asyncio.run_coroutine_threadsafe(attr(*a, **kw), self._loop).result(30)
        return attr


@pytest.fixture(params=["sync", "async"])
def state_store(request: pytest.FixtureRequest, r: redis.Redis, redis_url: str) -> Iterator[Callable[..., Any]]:
    """``state_store(keys, **kw)``: a :class:`StateStore`, then an :class:`AsyncStateStore` on the same Redis."""
    if request.param == "sync":
        yield lambda keys, **kw: StateStore(r, keys, **kw)
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="state-store-loop", daemon=True)
    thread.start()
    client = aredis.Redis.from_url(redis_url)
    yield lambda keys, **kw: _Awaited(AsyncStateStore(client, keys, **kw), loop)
    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of this test process's own (``tests/pgserver.py``: free port, temporary data,
    never the system's), started on first use; ``III_TEST_POSTGRES_URL`` names one to use instead."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (the examples extra)")
    given = os.environ.get("III_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    from tests.pgserver import PgServer, pg_bin

    if pg_bin("initdb") is None or pg_bin("postgres") is None:
        pytest.skip("PostgreSQL is not installed (initdb and postgres; or set III_TEST_POSTGRES_URL)")
    try:
        server = PgServer().start()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL of our own: {exc}")
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def postgres_url(postgres_server):
    """A PostgreSQL database of this test module's own (``iii_test_<random>``), dropped afterwards, on
    ``postgres_server``; the test is skipped, saying why, when psycopg or PostgreSQL is missing."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the examples extra)")
    admin = postgres_server
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
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory):
    """One RabbitMQ node of our own per run (free ports, temp data; pytest-xdist workers share it);
    tests keep apart by ``rabbitmq.prefix``."""
    from tests.rabbitnode import SharedNode, rabbit_bin

    if rabbit_bin("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed")
    # Under xdist each worker has its own base temp dir; their parent is the run's.
    base = tmp_path_factory.getbasetemp()
    shared = SharedNode((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "rabbit")
    node = shared.acquire()
    yield node
    shared.release()


@pytest.fixture
def rabbit_cluster(tmp_path: Path):
    """A 3-node RabbitMQ cluster of this test alone (free ports, its own data dirs, one cookie); the test may kill
    and restart its nodes. Never the system node."""
    from tests.rabbitnode import RabbitCluster, rabbit_bin

    if rabbit_bin("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed")
    cluster = RabbitCluster(tmp_path / "rabbit-cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def rabbit_prefix(request: pytest.FixtureRequest) -> str:
    """Exchange and queue names of this test alone, on the session's node."""
    import re
    import uuid

    return f"t{uuid.uuid4().hex[:8]}-{re.sub(r'[^A-Za-z0-9_-]', '', request.node.name)[:40]}"


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """Config lines for the broker a test runs on: "" for Redis (the default), or RabbitMQ on the session's node.

    Parametrize a test with ``@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)``.
    """
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        return ""
    node = request.getfixturevalue("rabbit_node")
    prefix = request.getfixturevalue("rabbit_prefix")
    return f"broker: rabbitmq\nrabbitmq:\n  url: {node.url}\n  prefix: {prefix}\n"


@pytest.fixture
def procs():
    """``iii-console --no-ui`` processes of a test, stopped (or killed) at its end."""
    started: list[subprocess.Popen[str]] = []

    def start(project: Path, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "iii_console", "--no-ui", *args, "--config", str(project / "iii-config.yaml")],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(p)
        banner = p.stderr.readline()  # type: ignore[union-attr]
        assert "running" in banner, banner + (p.stderr.read() if p.poll() is not None else "")  # type: ignore[union-attr]
        # The banner is the first line: a library's log line before it is a defect (a user sees it first).
        p.banner = banner  # type: ignore[attr-defined]
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
