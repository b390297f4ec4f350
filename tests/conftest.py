"""Fixtures: one real redis-server per test session, a clean database per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer

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
