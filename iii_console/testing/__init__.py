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

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from iii_console.core.redis_server import RedisServer
from iii_console.testing.app import IIIApp
from iii_console.testing.fast import IIISteps
from iii_console.testing.project import StepFailed

__all__ = ["IIIApp", "IIISteps", "StepFailed"]


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
    from iii_console.core.errors import IIIError
    from iii_console.core.redis_server import _os_release, find_redis_server, install_hint

    try:
        find_redis_server()
    except IIIError:
        # Not "pass --redis": these fixtures empty their Redis before every test, so they only ever use their own.
        import platform

        pytest.fail(
            f"the iii-console test fixtures start a private redis-server and none was found: {install_hint(platform.system(), _os_release())}",
            pytrace=False,
        )
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
