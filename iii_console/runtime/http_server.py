"""The ``server`` role: HTTP steps on uvicorn, hot-swappable.

Entered (on the loop that will serve), it binds the socket, builds the runner
with its async clients and the app, and starts uvicorn. :meth:`HttpServer.reload`
builds a new runner and app for the new steps and swaps them in between
requests; the replaced ones keep serving the requests that started on them and
are closed after a grace period. Exited, it stops accepting connections, waits
for uvicorn to finish (up to its graceful timeout), and closes every runner and
app it built, the one serving and any still in their grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn

from iii_console.adapters.http_protocol import timed_protocol
from iii_console.adapters.server import ServedApp, create_app
from iii_console.core.config import Config
from iii_console.core.discovery import StepSet
from iii_console.core.errors import ConfigError, IIIError
from iii_console.runtime import unawaited
from iii_console.runtime.runner import StepRunner, make_runner
from iii_console.runtime.services import Services

log = logging.getLogger(__name__)

#: How long a hot-reloaded app's old clients stay open for requests still running on it.
RETIRE_GRACE_S = 30.0
#: How long the exit waits for uvicorn to finish after asking it to.
SERVE_EXIT_S = 15.0


class SwappableApp:
    """The ASGI app uvicorn serves; hot reload replaces ``app`` between requests."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@dataclass
class _Version:
    """One version of the steps being served: the runner (with its async clients) and its app."""

    runner: StepRunner
    served: ServedApp

    async def aclose(self) -> None:
        for closer in (self.served, self.runner):
            try:
                await closer.aclose()
            except Exception:  # closing at shutdown or after a reload; nothing to report to
                log.debug("closing %r failed", closer, exc_info=True)


def listen(config: Config) -> socket.socket:
    """The server's listening socket, or an error naming the setting to change."""
    cfg = config.server
    if not cfg.loopback and not cfg.auth_token:
        raise ConfigError(
            f"refusing to listen on {cfg.host} without server.auth_token "
            "(anyone who can reach it could enqueue work); set one, or bind 127.0.0.1"
        )
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is
    # IPPROTO_TCP, and accepted sockets inherit it. With proto 0 every answer on a
    # kept-alive connection waited ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            # Most often a second `iii-console` in the same project: the first one's console
            # is what was wanted, and `attach` opens it on the same Redis.
            raise IIIError(
                f"cannot listen on {cfg.host}:{cfg.port}: address already in use. If `iii-console` is "
                "already running for this project, open its console with `iii-console attach`; "
                "to run another server, set server.port or --port"
            ) from None
        raise IIIError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror} (set server.port or --port)") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves ``steps``' HTTP triggers (and health, metrics, OpenAPI) on ``server.host:port``."""

    def __init__(
        self,
        config: Config,
        services: Services,
        steps: StepSet,
        *,
        retire_grace_s: float = RETIRE_GRACE_S,
        sock: socket.socket | None = None,
    ) -> None:
        #: A socket already bound by :func:`listen` (the supervisor binds first, before it writes anything), or None.
        self._sock = sock
        self.config = config
        self.services = services
        self.steps = steps
        self.retire_grace_s = retire_grace_s
        self.port: int | None = None
        self.app: SwappableApp | None = None
        self._current: _Version | None = None
        #: Replaced versions waiting out their grace period.
        self._retiring: dict[asyncio.Task[None], _Version] = {}
        self._server: uvicorn.Server | None = None
        self._serve: asyncio.Task[None] | None = None

    def _build(self, steps: StepSet) -> _Version:
        runner = make_runner(self.services, steps, async_side=True)
        return _Version(runner, create_app(runner, steps.http_steps(), max_body_bytes=self.config.server.max_body_bytes))

    async def __aenter__(self) -> HttpServer:
        sock, self._sock = self._sock or listen(self.config), None
        unawaited.install_for(self.services.emitter.emit, self.config, self.steps)
        try:
            self.port = sock.getsockname()[1]
            self._current = self._build(self.steps)
            self.app = SwappableApp(self._current.served.asgi)
            srv = self.config.server
            self._server = uvicorn.Server(
                uvicorn.Config(
                    self.app,
                    log_level="warning",
                    lifespan="on",
                    access_log=False,
                    timeout_graceful_shutdown=10,
                    http=timed_protocol(srv.header_timeout, srv.body_timeout),
                    limit_concurrency=srv.max_connections,
                )
            )
            # Signals are the supervisor's: uvicorn would otherwise take SIGINT and SIGTERM over while it
            # serves (stopping on its own) and raise them again once it has stopped.
            self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
            self._serve = asyncio.create_task(self._server.serve(sockets=[sock]), name="iii-server")
            for _ in range(500):
                if self._server.started:
                    return self
                if self._serve.done():
                    break
                await asyncio.sleep(0.01)
            raise IIIError("HTTP server did not start")
        except BaseException:
            await self.__aexit__(None, None, None)
            sock.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._serve is not None:
            try:
                await asyncio.wait_for(self._serve, SERVE_EXIT_S)
            except (TimeoutError, Exception):
                self._serve.cancel()
        for task in list(self._retiring):
            task.cancel()
        versions = [*self._retiring.values(), *([self._current] if self._current else [])]
        self._retiring.clear()
        self._current = None
        for version in versions:
            await version.aclose()

    async def reload(self, steps: StepSet) -> None:
        """Serve ``steps`` from the next request on; the replaced version is closed after the grace period."""
        assert self.app is not None and self._current is not None
        self.steps = steps
        old, self._current = self._current, self._build(steps)
        unawaited.install_for(self.services.emitter.emit, self.config, steps)  # a file the reload added names its step
        self.app.app = self._current.served.asgi
        retire = asyncio.create_task(self._retire(old), name="iii-retire")
        self._retiring[retire] = old
        retire.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def _retire(self, version: _Version) -> None:
        """Close a replaced version once its last requests are done.

        Requests that started on the old app may still be awaiting Redis through
        its clients, so they are closed after a grace period, not at the swap.
        """
        await asyncio.sleep(self.retire_grace_s)
        await version.aclose()
