"""Fixtures: one real redis-server per test session, a clean database per test."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
import redis.asyncio as aredis

from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer
from iii_console.core.state import AsyncStateStore, StateStore

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
