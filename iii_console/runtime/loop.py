"""The event loop a headless process runs on: uvloop where it is installed.

uvloop (libuv) runs the HTTP server's transport callbacks and the Redis
clients' socket reads in C; the asyncio default loop does them in Python. The
console keeps the default loop: Textual's drivers are written against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` where uvloop imports, else ``None`` (asyncio's default loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop where it is installed."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
