"""Lua sources of the scripts that move messages or write events.

Those scripts start with ``lua/_events.lua``: the shared helpers with which each
checks its keys, writes the events of its own transition and wakes whoever waits
on a queue. One place prepends it, for the core's scripts and the queue adapter's.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

PRELUDE = resources.files("iii_console.core").joinpath("lua/_events.lua").read_text()


def with_prelude(*parts: str | Traversable) -> str:
    """``_events.lua`` followed by each part (a source text, or a file to read)."""
    texts = [p if isinstance(p, str) else p.read_text() for p in parts]
    return "\n".join([PRELUDE, *texts])


def core_script(name: str) -> str:
    """The core's ``lua/NAME.lua`` with the prelude before it."""
    return with_prelude(resources.files("iii_console.core").joinpath(f"lua/{name}.lua"))
