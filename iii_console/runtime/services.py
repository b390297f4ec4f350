"""The runtime's name for the core's client bundle (:mod:`iii_console.core.services`).

The bundle and the Redis client helpers live in the core, where the command-line
clients and the console reach them without the runtime; the roles import them from here.
"""

from __future__ import annotations

from iii_console.core.config import Config
from iii_console.core.connection import fast_retry, redis_client
from iii_console.core.services import Services, process_name

__all__ = ["Services", "fast_retry", "open_services", "process_name", "redis_client"]


def open_services(config: Config, role: str, *, traced: bool = False) -> Services:
    """``Services.open``, plus span export when ``traced`` (this process serves requests or runs
    messages) and tracing is configured; the command line's one-shot commands do not trace."""
    services = Services.open(config, role)
    if traced:
        from iii_console.adapters.telemetry import start

        services.tracing = start(config, role)
    return services
