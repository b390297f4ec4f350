"""Random ids made per request and per message, as ``uuid.uuid4()`` makes them, for less.

``uuid.uuid4()`` builds a ``UUID`` object (an int from 16 random bytes) and then its
text: ~2 µs, and an HTTP request that enqueues makes three (its trace id, the message's
id and its Redis id). These make the same text from 16 bytes of ``os.urandom``,
version and variant bits included, in a fraction of the time.

The bytes are read from ``os.urandom`` 4 KiB at a time and handed out 16 at a time.
``os.urandom`` is a system call that lets go of the GIL: on a busy server's event loop,
one per id meant waiting to get the GIL back from the process's other threads, several
times a request. A child made by ``fork`` drops what its parent had read, so no two
processes hand out the same bytes.
"""

from __future__ import annotations

import os
import threading

#: Bytes read from the system at a time: 256 ids.
POOL_BYTES = 4096

_lock = threading.Lock()
_pool = b""
_at = 0


def _forget() -> None:
    global _lock, _pool, _at
    _lock = threading.Lock()
    _pool, _at = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


def random_bytes16() -> bytes:
    """16 bytes from ``os.urandom``, read ahead in blocks of :data:`POOL_BYTES`."""
    global _pool, _at
    with _lock:
        at = _at
        if at + 16 > len(_pool):
            _pool, at = os.urandom(POOL_BYTES), 0
        _at = at + 16
        return _pool[at : at + 16]


def _random_v4() -> str:
    b = bytearray(random_bytes16())
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def trace_id() -> str:
    """``uuid.uuid4().hex``: 32 hex digits."""
    return _random_v4()


def message_id() -> str:
    """``str(uuid.uuid4())``: 8-4-4-4-12 hex digits."""
    h = _random_v4()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
