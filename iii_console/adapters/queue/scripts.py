"""Load the broker's Lua scripts once per client."""

from __future__ import annotations

from importlib import resources
from typing import Any

_NAMES = ("enqueue", "fetch", "move", "dead", "heartbeat", "sweep", "requeue_dead", "ack")
SOURCES = {n: resources.files(__package__).joinpath(f"lua/{n}.lua").read_text() for n in _NAMES}


class Scripts:
    def __init__(self, client: Any):
        for name, src in SOURCES.items():
            setattr(self, name, client.register_script(src))
