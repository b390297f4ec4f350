"""Request guards in front of every route: Host allow-list and bearer token.

A dev server on loopback is reachable from any web page through DNS rebinding
(a hostile name resolving to 127.0.0.1); checking the Host header closes that.
Off loopback, the supervisor refuses to start without a token, and this guard
enforces it (the health check stays open for load-balancer probes).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _host_name(raw: str) -> str:
    if raw.startswith("["):  # [::1]:3111
        return raw.split("]", 1)[0] + "]"
    return raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw


def guard(app: ASGIApp, *, allowed_hosts: list[str], token: str, open_paths: tuple[str, ...] = ()) -> ASGIApp:
    allow_any = "*" in allowed_hosts
    allowed = {h.lower() for h in allowed_hosts}
    expected = f"Bearer {token}".encode() if token else b""

    async def deny(send: Any, status: int, error: str, extra: dict[bytes, bytes] | None = None) -> None:
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += list((extra or {}).items())
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if not allow_any:
            host = _host_name(headers.get(b"host", b"").decode("latin-1").lower())
            if host not in allowed:
                return await deny(send, 400, f"host {host!r} is not allowed (server.allowed_hosts)")
        if expected and scope.get("path") not in open_paths:
            if not hmac.compare_digest(headers.get(b"authorization", b""), expected):
                return await deny(send, 401, "missing or wrong bearer token", {b"www-authenticate": b"Bearer"})
        await app(scope, receive, send)

    return guarded
