"""The HTTP server's connection protocol: uvicorn's, with read timeouts and one write per response.

**Read timeouts.** uvicorn closes a connection idle *between* requests (``timeout_keep_alive``),
but not one that sends a request slowly: headers a byte at a time, a body
that never arrives, or nothing at all after connecting. Each such connection
would stay open for good, before any token check, with the file-descriptor
limit as the only bound. This protocol closes a connection whose request
headers are not complete within ``header_timeout`` seconds of its first byte
(or of the connection, for a new one), or whose body is not complete within
``body_timeout`` seconds of its headers.

**One write per response.** uvicorn writes a response's status line and headers
to the socket when the app sends ``http.response.start``, then its body when the
app sends ``http.response.body``: two ``write`` calls, and on a TCP socket two
segments for the kernel to send and the client to read, for every small answer.
With httptools, a request's writes made in the same turn of the event loop go out
together at the end of that turn (:class:`OneWrite`); a streamed body's later
chunks are still written as they come, each in its own turn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # the C parser (httptools) where it is installed: about a fifth of a request's server time is h11's
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency where it has wheels
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


if TYPE_CHECKING:  # the attributes the mixin uses, typed as uvicorn's h11 protocol has them
    _Protocol = H11Protocol
else:
    _Protocol = object


class _Timed(_Protocol):
    """The deadlines, for either of uvicorn's HTTP/1.1 protocols (both keep the request in ``self.cycle``)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._waiting_for and not self._in_request():
            self._arm("headers", self.header_timeout)  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()
        self._track()  # a pipelined request may have started

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _track(self) -> None:
        """Move the deadline along: headers done -> the body's; body done -> none."""
        if not self._in_request():
            return
        if self.cycle.more_body:
            if self._waiting_for != "body":
                self._arm("body", self.body_timeout)
        elif self._waiting_for:
            self._disarm()

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = what
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = ""

    def _expired(self) -> None:
        self._deadline = None
        self._waiting_for = ""
        if not self.transport.is_closing():
            self.transport.close()


#: What a request's writes of one turn may add up to before they are written at once.
KEEP_BYTES = 64 * 1024


class OneWrite:
    """A request's transport whose writes made in one turn of the loop reach the socket in one call.

    The first write of a turn is kept and a flush is scheduled (``call_soon``): the
    headers and a body sent right after them leave together; once what is kept reaches
    :data:`KEEP_BYTES` it is written at once. Closing writes what is kept first; a
    transport already closing drops it, as its own ``write`` would. Everything else is
    the connection's transport's.
    """

    __slots__ = ("_kept", "_kept_bytes", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._kept: list[bytes] | None = None
        self._kept_bytes = 0

    def write(self, data: bytes) -> None:
        if self._kept is None:
            self._kept = [data]
            self._kept_bytes = len(data)
            self._loop.call_soon(self.flush)
        else:
            self._kept.append(data)
            self._kept_bytes += len(data)
        if self._kept_bytes >= KEEP_BYTES:  # a large body written in one turn goes out as it comes, not copied into one
            self.flush()

    def flush(self) -> None:
        kept, self._kept = self._kept, None
        if kept and not self._transport.is_closing():
            self._transport.write(kept[0] if len(kept) == 1 else b"".join(kept))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TimedH11Protocol(_Timed, H11Protocol):
    pass


if HttpToolsProtocol is not None:

    class TimedHttpToolsProtocol(_Timed, HttpToolsProtocol):  # type: ignore[misc]
        if hasattr(HttpToolsProtocol, "_start_asgi_task"):  # where uvicorn starts every request's app (pipelined or not) here

            def _start_asgi_task(self, cycle: Any, app: Any) -> None:
                cycle.transport = OneWrite(self.transport, self.loop)
                super()._start_asgi_task(cycle, app)

            def shutdown(self) -> None:
                # A graceful stop closes the connection of a finished request at once: write what
                # its answer still keeps for the end of this turn first.
                transport = getattr(self.cycle, "transport", None)
                if isinstance(transport, OneWrite):
                    transport.flush()
                super().shutdown()


def timed_protocol(header_timeout: float, body_timeout: float) -> type[Any]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these timeouts: on httptools where it is installed."""
    base = TimedHttpToolsProtocol if HttpToolsProtocol is not None else TimedH11Protocol
    return type(base.__name__, (base,), {"header_timeout": header_timeout, "body_timeout": body_timeout})
