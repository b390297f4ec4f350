"""The HTTP server's connection protocol: uvicorn's, with read timeouts and one write per response.

**Read timeouts.** uvicorn closes a connection idle *between* requests (``timeout_keep_alive``),
but not one that sends a request slowly: headers a byte at a time, a body
that never arrives, or nothing at all after connecting. Each such connection
would stay open for good, before any token check, with the file-descriptor
limit as the only bound. This protocol closes a connection whose request
headers are not complete within ``header_timeout`` seconds of its first byte
(or of the connection, for a new one), or whose body is not complete within
``body_timeout`` seconds of its headers. A request whose line and headers pass
:data:`MAX_HEADER_BYTES` is answered ``431`` and its connection closed: httptools keeps
headers without a bound, so one connection could fill the server's memory before any
token check.

**One write per response.** uvicorn writes a response's status line and headers
to the socket when the app sends ``http.response.start``, then its body when the
app sends ``http.response.body``: two ``write`` calls, and on a TCP socket two
segments for the kernel to send and the client to read, for every small answer.
With httptools, the connection's writes go through :class:`OneWrite`, which keeps
them until the response is complete or the turn of the event loop ends, and
writes what it kept in one call; a streamed body's later chunks are still written
as they come, each in its own turn. Every write and close of the connection, the
protocol's own (a ``400`` for a malformed request, a timeout) included, goes
through it, so nothing overtakes a kept answer; it is written before the
transport closes for any reason.

**Half-closed connections.** A client that sends its request and shuts its
sending side at once (scripted clients, probes) still gets its answer: the
connection stays open for writing until the requests it sent are answered, then
closes. uvicorn closed it at the peer's end of input, losing any answer not
written by then. The app is told the client is done (``receive`` answers
``http.disconnect``), so a streamed answer, which listens for that, stops.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # the C parser (httptools) where it is installed: about a fifth of a request's server time is h11's
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
except ImportError:  # pragma: no cover - httptools is a dependency where it has wheels
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
    RequestResponseCycle = object  # type: ignore[assignment,misc]


if TYPE_CHECKING:  # the attributes the mixin uses, typed as uvicorn's h11 protocol has them
    _Protocol = H11Protocol
else:
    _Protocol = object


#: Most bytes a request's line and headers may take (nginx takes 4 x 8 KiB by default, h11 16 KiB).
MAX_HEADER_BYTES = 64 * 1024
#: How long a refused connection's further input is read and dropped before it is closed.
LINGER_S = 2.0
_TOO_LARGE_BODY = b"request headers too large (at most 65536 bytes)\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_TOO_LARGE_BODY)).encode() + b"\r\n\r\n" + _TOO_LARGE_BODY
)


class _Timed(_Protocol):
    """The deadlines, for either of uvicorn's HTTP/1.1 protocols (both keep the request in ``self.cycle``)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str = ""
        #: Bytes received since the request's headers began (while ``_waiting_for == "headers"``).
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._waiting_for == "refused":
            return  # read and dropped until the peer stops or the linger ends (closing with unread input resets)
        if not self._waiting_for and not self._in_request():
            self._arm("headers", self.header_timeout)  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        self._track()
        if self._waiting_for == "headers":
            # Still in a request's headers: every byte so far is theirs (httptools keeps them all, unbounded).
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self._refuse()

    def _refuse(self) -> None:
        """Answer ``431`` and shut our side; what the peer still sends is read and dropped for up to
        :data:`LINGER_S` (closed on unread input, the socket would be reset and the answer lost)."""
        self.transport.write(_TOO_LARGE)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm("refused", LINGER_S)
        else:  # pragma: no cover - TCP transports can
            self.transport.close()

    def eof_received(self) -> None:
        if self._waiting_for == "refused":
            return  # the peer is done too: the transport closes
        super().eof_received()

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
        self._header_bytes = 0
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
    """A connection's transport whose writes reach the socket together: one call per answer.

    The first write after a flush is kept and a flush is scheduled for the end of the
    loop's turn (``call_soon``); the protocol flushes sooner when a response is
    complete, and once what is kept reaches :data:`KEEP_BYTES` it is written at once.
    Closing writes what is kept first; a transport already closing drops it, as its
    own ``write`` would. Everything else is the connection's transport's.
    """

    __slots__ = ("_kept", "_kept_bytes", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        #: The connection's own transport.
        self.transport = transport
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

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        kept, self._kept = self._kept, None
        if kept and not self.transport.is_closing():
            self.transport.write(kept[0] if len(kept) == 1 else b"".join(kept))

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + (self._kept_bytes if self._kept else 0)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class TimedH11Protocol(_Timed, H11Protocol):
    pass


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, told when the peer shut its sending side after the whole request.

    From then on a ``receive`` answers ``http.disconnect``: what listens for the client going
    away (a streamed answer: Litestar's ``Stream``, a progress stream) stops, as it would if
    the connection had closed, and the connection closes when it has; an answer still being
    made (by an app that does not listen) is written all the same.
    """

    peer_done = False

    async def receive(self) -> Any:
        if self.peer_done and not self.more_body and not self.body:
            self.disconnected = True  # to the app the client is gone: what it sends from now on goes nowhere
            return {"type": "http.disconnect"}
        return await super().receive()

    async def run_asgi(self, app: Any) -> None:
        await super().run_asgi(app)
        if self.peer_done and not self.response_complete and not self.transport.is_closing():
            self.transport.close()  # the app stopped for a client that had shut its side: nothing more will come


if HttpToolsProtocol is not None:

    class TimedHttpToolsProtocol(_Timed, HttpToolsProtocol):  # type: ignore[misc]
        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            cycle.__class__ = _Cycle  # the same object and fields, with the receive above (before the task runs it)
            super()._start_asgi_task(cycle, app)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # Flow control and the addresses read the connection's own transport; every write and close goes through OneWrite.
            super().connection_made(transport)
            self.transport = OneWrite(transport, self.loop)  # type: ignore[assignment]

        #: The peer shut its sending side after whole requests: close once they are answered.
        _peer_done = False

        def on_response_complete(self) -> None:
            # The answer is whole: out now (work the app still does in this turn does not hold it back),
            # and before a pipelined request's answer starts.
            self.transport.flush()  # type: ignore[attr-defined]
            super().on_response_complete()
            if self._peer_done and not self._in_request() and not self.pipeline:
                self.transport.close()

        def eof_received(self) -> bool | None:  # type: ignore[override]
            if self._waiting_for == "refused":
                return super().eof_received()
            self.transport.flush()  # type: ignore[attr-defined]
            whole = self._in_request() and not self.cycle.more_body
            if whole or self.pipeline:
                # The peer shut its side after sending whole requests (scripted clients and probes do): ours
                # stays open to answer them, then closes. uvicorn let the transport close here, and an
                # answer that waited on anything (Redis, a thread) was lost. A stream listening for the
                # client to go (``_Cycle``) is told it has: a client that closed mid-stream shuts its
                # side first, and would otherwise hold the stream and its slot until a write failed.
                self._peer_done = True
                if whole and isinstance(self.cycle, _Cycle):
                    self.cycle.peer_done = True
                    self.cycle.message_event.set()
                return True
            return super().eof_received()  # nothing to answer, or a body that can no longer come: closed

        def handle_websocket_upgrade(self, *args: Any) -> None:
            # The websocket protocol takes the connection's own transport; nothing kept is left behind.
            self.transport.flush()  # type: ignore[attr-defined]
            self.transport = self.transport.transport  # type: ignore[attr-defined]
            super().handle_websocket_upgrade(*args)


def timed_protocol(header_timeout: float, body_timeout: float) -> type[Any]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these timeouts: on httptools where it is installed."""
    base = TimedHttpToolsProtocol if HttpToolsProtocol is not None else TimedH11Protocol
    return type(base.__name__, (base,), {"header_timeout": header_timeout, "body_timeout": body_timeout})
