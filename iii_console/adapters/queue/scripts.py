"""Load the broker's Lua scripts once per client.

Scripts that move messages start with the core's ``lua/_events.lua``
(``core/luasrc.py``): the helpers with which each checks its keys, writes the
events of its own transition and wakes whoever waits on a queue.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from iii_console.core.luasrc import register, with_prelude

_NAMES = (
    "enqueue",
    "fetch",
    "move",
    "dead",
    "heartbeat",
    "sweep",
    "requeue_dead",
    "requeue",
    "ack_many",
    "promote",
    "throttle",
    "throttle_started",
)
#: Scripts that move messages or write events, and so start with the shared prelude.
_WITH_PRELUDE = {"enqueue", "move", "dead", "requeue_dead", "requeue", "ack_many", "promote"}
#: Scripts that settle a message, and so may settle its fan-in group (``lua/_fanin.lua``).
_SETTLES = {"ack_many", "dead"}
#: Scripts that admit a start to a throttle's window (``lua/_window.lua``).
_WINDOWS = {"throttle", "throttle_started"}
_LUA = resources.files(__package__).joinpath("lua")


def _source(name: str) -> str:
    parts: list[Any] = [_LUA.joinpath("_fanin.lua")] if name in _SETTLES else []
    if name in _WINDOWS:
        parts.append(_LUA.joinpath("_window.lua"))
    if name == "enqueue":
        parts += [ENQUEUE_FUNCTION, "return iii_enqueue(ARGV, false)"]
    else:
        parts.append(_LUA.joinpath(f"{name}.lua"))
    if name in _WITH_PRELUDE:
        return with_prelude(*parts)
    return "\n".join(p if isinstance(p, str) else p.read_text() for p in parts)


#: ``enqueue.lua`` as a local function ``iii_enqueue(ARGV, check_only, checked)``, for the
#: enqueue script itself and for a unit of work that makes several enqueues in one call
#: (it checks each first, then applies each from what its check decoded).
ENQUEUE_FUNCTION = "local function iii_enqueue(ARGV, check_only, checked)\n" + _LUA.joinpath("enqueue.lua").read_text() + "\nend"

SOURCES = {n: _source(n) for n in _NAMES}


class Scripts:
    enqueue: Any
    fetch: Any
    move: Any
    dead: Any
    heartbeat: Any
    sweep: Any
    requeue_dead: Any
    requeue: Any
    ack_many: Any
    promote: Any
    throttle: Any
    throttle_started: Any

    def __init__(self, client: Any):
        for name, src in SOURCES.items():
            setattr(self, name, register(client, src))
