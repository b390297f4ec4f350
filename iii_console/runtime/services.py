"""The runtime's name for the core's client bundle (:mod:`iii_console.core.services`).

The bundle and the Redis client helpers live in the core, where the command-line
clients and the console reach them without the runtime; the roles import them from here.
"""

from iii_console.core.connection import fast_retry, redis_client
from iii_console.core.services import Services, process_name

__all__ = ["Services", "fast_retry", "process_name", "redis_client"]
