"""Request guards in front of every route: Host allow-list and bearer token.

A dev server on loopback is reachable from any web page through DNS rebinding
(a hostile name resolving to 127.0.0.1); checking the Host header closes that.
Off loopback, the supervisor refuses to start without a token, and this guard
enforces it (the health check stays open for load-balancer probes).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _host_name(raw: str) -> str:
    if raw.startswith("["):  # [::1]:3111
        return raw.split("]", 1)[0] + "]"
    return raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw


def _bad_port(raw: str) -> bool:
    """A ``Host`` whose port is not a number from 1 to 65535 (Litestar answers 500 to one)."""
    if raw.startswith("["):
        rest = raw.split("]", 1)[1] if "]" in raw else ""
        port = rest[1:] if rest.startswith(":") else None
    else:
        port = raw.rsplit(":", 1)[1] if raw.count(":") == 1 else None
    return port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535)


def _origin_host(origin: str) -> str | None:
    """The host name of an ``Origin`` header (``http://localhost:3111`` -> ``localhost``); ``None`` if opaque."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin)
        host = parts.hostname
    except ValueError:
        return None
    if not host or parts.scheme not in ("http", "https"):
        return None
    return f"[{host}]" if ":" in host else host


def _bearer(value: bytes) -> bytes | None:
    """The credentials of ``Authorization: Bearer ...`` (the scheme's case does not matter, RFC 7235)."""
    scheme, _, rest = value.partition(b" ")
    return rest.strip(b" ") if scheme.lower() == b"bearer" else None


def guard(app: ASGIApp, *, allowed_hosts: list[str], token: str, open_paths: tuple[str, ...] = ()) -> ASGIApp:
    """``Host`` allow-list, cross-site refusal (without a token), bearer token; ``HEAD`` served as a bodiless ``GET``."""
    allow_any = "*" in allowed_hosts
    allowed = {h.lower() for h in allowed_hosts}
    expected = token.encode() if token else b""

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
        raw_host = headers.get(b"host", b"").decode("latin-1").lower()
        if _bad_port(raw_host):
            return await deny(send, 400, f"host {raw_host!r}: the port is not a number from 1 to 65535")
        if not allow_any:
            host = _host_name(raw_host)
            if host not in allowed:
                return await deny(send, 400, f"host {host!r} is not allowed (server.allowed_hosts)")
        if expected:
            if scope.get("path") not in open_paths:
                got = _bearer(headers.get(b"authorization", b""))
                if not hmac.compare_digest(got or b"", expected) or got is None:
                    return await deny(send, 401, "missing or wrong bearer token", {b"www-authenticate": b"Bearer"})
        else:
            # Without a token, a page on another site must not reach a step (an <img> is a GET,
            # a form or fetch() a POST): browsers say where a request comes from.
            if headers.get(b"sec-fetch-site", b"").lower() == b"cross-site":
                return await deny(send, 403, "cross-site request refused (Sec-Fetch-Site: cross-site)")
            origin = headers.get(b"origin")
            if origin is not None and not allow_any and _origin_host(origin.decode("latin-1").lower()) not in allowed:
                return await deny(send, 403, "cross-site request refused (Origin is not an allowed host)")
        if scope.get("method") == "HEAD":
            return await app({**scope, "method": "GET"}, receive, _without_body(send))
        await app(scope, receive, send)

    return guarded


def _without_body(send: Any) -> Any:
    """``send`` for a ``HEAD`` answered as a ``GET``: the headers (``content-length`` included), no body.

    The answer ends with its headers: what the app sends after them goes nowhere, and the
    app is told the client is gone (``receive`` answers ``http.disconnect``). A stream (a
    progress stream runs up to an hour) stops there instead of running on for a client
    that will never read it, holding a connection slot.
    """
    ended = False

    async def head_send(message: Any) -> None:
        nonlocal ended
        if ended:
            return
        if message["type"] == "http.response.body":  # a body before any start: as the server would take it
            await send({**message, "body": b""})
            return
        await send(message)
        if message["type"] == "http.response.start":
            ended = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return head_send
