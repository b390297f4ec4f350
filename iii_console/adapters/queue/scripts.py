"""Load the broker's Lua scripts once per client.

Scripts that move messages start with the core's ``lua/_events.lua``: the
helpers with which each writes the events of its own transition (see that file).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

_NAMES = ("enqueue", "fetch", "move", "dead", "heartbeat", "sweep", "requeue_dead", "requeue", "ack", "promote", "throttle")
#: Scripts that write events and so need the shared prelude.
_WITH_EVENTS = {"enqueue", "move", "dead", "requeue_dead", "ack", "promote"}
#: Scripts that settle a message, and so may settle its fan-in group (``lua/_fanin.lua``).
_SETTLES = {"ack", "dead"}
_PRELUDE = resources.files("iii_console.core").joinpath("lua/_events.lua").read_text()
_FANIN = resources.files(__package__).joinpath("lua/_fanin.lua").read_text()
SOURCES = {
    n: (_PRELUDE + "\n" if n in _WITH_EVENTS else "") + (_FANIN + "\n" if n in _SETTLES else "")
    + resources.files(__package__).joinpath(f"lua/{n}.lua").read_text()
    for n in _NAMES
}


class Scripts:
    enqueue: Any
    fetch: Any
    move: Any
    dead: Any
    heartbeat: Any
    sweep: Any
    requeue_dead: Any
    requeue: Any
    ack: Any
    promote: Any
    throttle: Any

    def __init__(self, client: Any):
        for name, src in SOURCES.items():
            setattr(self, name, client.register_script(src))
