"""iii-console: steps framework, dev server and live console for background work.

The public API a step file uses::

    from iii_console import Step, http, queue, cron, state

and, for type hints, what handlers receive: ``HttpRequest``, ``CronTick``,
``StateChange`` (inputs) and ``Context`` / ``SyncContext`` (``async def`` / ``def``).
Everything else is runtime machinery.
"""

from iii_console.core.context import Context, CronTick, HttpRequest, StateChange, SyncContext
from iii_console.core.steps import Step, cron, http, queue, state

__all__ = ["Context", "CronTick", "HttpRequest", "StateChange", "Step", "SyncContext", "cron", "http", "queue", "state"]
__version__ = "0.1.0"
