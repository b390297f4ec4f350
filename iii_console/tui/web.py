"""The console in a browser: ``textual-serve`` runs one attached console per browser tab.

Each websocket gets its own ``iii-console attach`` process (read-only unless
actions are allowed), whose Redis URL is passed in its environment, never on a
command line. What a browser may reach is guarded before any page, asset or
websocket: the ``Host`` must be one this server answers to (no DNS rebinding),
a websocket must come from the page's own origin (no cross-site websocket
hijacking, which CORS does not stop), and with a token set every request must
present it: ``?token=`` once (answered with a cookie and a redirect that drops
it from the address bar), HTTP basic auth with the token as password, or
``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.server import Server

from iii_console.core.config import is_loopback_host

COOKIE = "iii_console_web"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: How long a stop waits for the browser sessions' consoles to quit.
SESSION_STOP_S = 5.0


#: The largest window a browser may ask the console to draw (a browser's own, at any zoom, is smaller).
#: Past it one frame is megabytes, and a session dropped while its console writes one left that console
#: blocked on the pipe, for good.
MAX_WIDTH, MAX_HEIGHT = 500, 200


def _bounded_size(request: web.Request) -> web.Request:
    """``request`` with its ``width``/``height`` query brought within :data:`MAX_WIDTH` x :data:`MAX_HEIGHT`."""
    query = dict(request.query)
    for key, most in (("width", MAX_WIDTH), ("height", MAX_HEIGHT)):
        value = query.get(key, "")
        if value.isdigit() and int(value) > most:
            query[key] = str(most)
    if query == dict(request.query):
        return request
    return request.clone(rel_url=request.rel_url.with_query(query))


def console_command(*, allow_actions: bool, server_url: str | None, config_path: str | None) -> str:
    """The shell command textual-serve runs per browser tab (no secret in it: Redis comes from REDIS_URL)."""
    parts = [sys.executable, "-m", "iii_console", "attach", "--read-write" if allow_actions else "--read-only"]
    if allow_actions and server_url:
        parts += ["--server-url", server_url]
    if config_path:
        parts += ["--config", os.path.abspath(config_path)]
    return " ".join(shlex.quote(p) for p in parts)


class ConsoleServer(Server):
    """textual-serve's server with our guard in front of every route and a plain start line."""

    def __init__(
        self,
        command: str,
        *,
        host: str,
        port: int,
        token: str = "",
        public_url: str | None = None,
        title: str = "iii-console",
        on_ready: Callable[[str], None] | None = None,
    ):
        super().__init__(command, host=host, port=port, title=title, public_url=public_url)
        self.token = token
        self.fixed_url = public_url
        self.on_ready = on_ready
        #: Handlers of open browser sessions, ended at shutdown (aiohttp would wait a minute for them).
        self._sessions: set[asyncio.Task[Any]] = set()
        #: What the cookie holds: a digest of the token, not the token.
        self._cookie = hmac.new(token.encode(), b"iii-console web session", hashlib.sha256).hexdigest() if token else ""

    # -- the guard ------------------------------------------------------------
    def _host_ok(self, request: web.Request) -> bool:
        if not is_loopback_host(self.host):
            return True  # reached by any name; the token guards
        name = urlsplit(f"//{request.host}").hostname or ""
        return name in LOOPBACK_NAMES

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or urlsplit(origin).netloc == request.host

    def _presented(self, request: web.Request) -> str | None:
        """How the request proves it knows the token: ``query``, ``header``, ``cookie``, or ``None``."""

        def same(value: str) -> bool:
            return hmac.compare_digest(value.encode(), self.token.encode())

        if same(request.query.get("token", "")):
            return "query"
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and same(value.strip()):
            return "header"
        if scheme.lower() == "basic":
            try:
                _user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                password = ""
            if same(password):
                return "header"
        if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self._cookie.encode()):
            return "cookie"
        return None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._host_ok(request):
            return web.Response(status=400, text="this console answers only to 127.0.0.1 and localhost\n")
        if request.path == "/ws" and not self._same_origin(request):
            return web.Response(status=403, text="the console's websocket is for its own page only\n")
        if not self.token:
            return await handler(request)
        via = self._presented(request)
        if via is None:
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="iii-console", charset="UTF-8"'},
                text="this console needs its token: open it as /?token=TOKEN (server.auth_token), "
                "or sign in with the token as the password\n",
            )
        if via == "query" and request.path == "/":
            rest = {k: v for k, v in request.query.items() if k != "token"}
            return self._with_cookie(
                web.Response(status=303, headers={"Location": request.rel_url.with_query(rest).path_qs}), request
            )
        response = await handler(request)
        if via != "cookie" and not isinstance(response, web.WebSocketResponse):
            self._with_cookie(response, request)
        return response

    def _with_cookie(self, response: Any, request: web.Request) -> Any:
        response.set_cookie(COOKIE, self._cookie, httponly=True, samesite="Strict", path="/", secure=request.secure)
        return response

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        """The page, with asset and websocket URLs on the address the browser used (behind a
        proxy, ``--public-url``): bound to 0.0.0.0 there is no one right name to print."""
        if self.fixed_url is None:
            self.public_url = f"{request.scheme}://{request.host}"
        return await Server.handle_index(self, request)

    async def on_startup(self, app: web.Application) -> None:
        pass  # textual-serve prints a logo; the CLI prints one line once the socket is bound

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        request = _bounded_size(request)
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            return await super().handle_websocket(request)
        finally:
            self._sessions.discard(task)

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every browser session: each closes its websocket and tells its console to quit."""
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            await asyncio.wait(sessions, timeout=SESSION_STOP_S)

    # -- running --------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        runner = web.AppRunner(await self._make_app(), handle_signals=False, access_log=None, shutdown_timeout=SESSION_STOP_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        if self.on_ready is not None:
            self.on_ready(self.fixed_url or f"http://{shown}:{port}")
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    def serve(self, debug: bool = False) -> None:
        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.run(stop)

        asyncio.run(main())
