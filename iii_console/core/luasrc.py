"""Lua sources of the scripts that move messages or write events.

Those scripts start with ``lua/_events.lua``: the shared helpers with which each
checks its keys, writes the events of its own transition and wakes whoever waits
on a queue. One place prepends it, for the core's scripts and the queue adapter's.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import redis
import redis.client
import redis.commands.core

PRELUDE = resources.files("iii_console.core").joinpath("lua/_events.lua").read_text()


def with_prelude(*parts: str | Traversable) -> str:
    """``_events.lua`` followed by each part (a source text, or a file to read)."""
    texts = [p if isinstance(p, str) else p.read_text() for p in parts]
    return "\n".join([PRELUDE, *texts])


def core_script(name: str) -> str:
    """The core's ``lua/NAME.lua`` with the prelude before it."""
    return with_prelude(resources.files("iii_console.core").joinpath(f"lua/{name}.lua"))


class Script(redis.commands.core.Script):
    """redis-py's ``Script`` with a shorter call on the client it was registered with.

    redis-py's ``__call__`` imports two modules on every call (to tell pipelines
    apart); the broker's and the event sink's scripts run several times per
    message. A call on another client (a pipeline) takes redis-py's path.
    """

    def __init__(self, registered_client: Any, script: str):
        super().__init__(registered_client, script)
        self.sha: str
        #: A pipeline must be told of the script, to load it when it runs (redis-py's path does).
        self._direct = not isinstance(registered_client, redis.client.Pipeline)

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if not self._direct or (client is not None and client is not self.registered_client):
            return super().__call__(keys, args, client)
        client = self.registered_client
        keys = tuple(keys or ())
        argv = (*keys, *(args or ()))
        try:
            return client.evalsha(self.sha, len(keys), *argv)
        except redis.exceptions.NoScriptError:
            # Redis lost its script cache (a restart, a SCRIPT FLUSH): load it again.
            self.sha = client.script_load(self.script)
            return client.evalsha(self.sha, len(keys), *argv)


def register(client: redis.Redis, source: str) -> Script:
    """``client.register_script(source)``, as a :class:`Script`."""
    return Script(client, source)
