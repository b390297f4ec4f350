"""iii-console: steps framework, dev server and live console for background work.

The public API a step file uses::

    from iii_console import Step, http, queue, cron, state

and, for type hints, what handlers receive: ``HttpRequest``, ``CronTick``,
``StateChange`` (inputs) and ``Context`` / ``SyncContext`` (``async def`` / ``def``).
Everything else is runtime machinery.

The names are imported on first use (PEP 562), so ``import iii_console`` itself
costs nothing: the command's entry point (:mod:`iii_console.entry`) is then
running, and can turn a Ctrl+C during the heavy imports into a quiet exit, before
pydantic and friends load.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iii_console.core.answers import download, progress_stream
    from iii_console.core.batch import BatchFailures
    from iii_console.core.blobs import BlobError, BlobNotFound, BlobRef
    from iii_console.core.context import Context, CronTick, HttpRequest, StateChange, SyncContext
    from iii_console.core.errors import SoftTimeLimitExceeded, TimeLimitExceeded
    from iii_console.core.lease import LockLost, LockTaken
    from iii_console.core.retry import Retry
    from iii_console.core.steps import Step, cron, http, queue, state

_WHERE = {
    **dict.fromkeys(("Context", "CronTick", "HttpRequest", "StateChange", "SyncContext"), "iii_console.core.context"),
    **dict.fromkeys(("Step", "cron", "http", "queue", "state"), "iii_console.core.steps"),
    **dict.fromkeys(("SoftTimeLimitExceeded", "TimeLimitExceeded"), "iii_console.core.errors"),
    "Retry": "iii_console.core.retry",
    **dict.fromkeys(("download", "progress_stream"), "iii_console.core.answers"),
    **dict.fromkeys(("BlobError", "BlobNotFound", "BlobRef"), "iii_console.core.blobs"),
    "BatchFailures": "iii_console.core.batch",
    **dict.fromkeys(("LockLost", "LockTaken"), "iii_console.core.lease"),
}

__all__ = [
    "BatchFailures",
    "BlobError",
    "BlobNotFound",
    "BlobRef",
    "Context",
    "CronTick",
    "HttpRequest",
    "LockLost",
    "LockTaken",
    "Retry",
    "SoftTimeLimitExceeded",
    "StateChange",
    "Step",
    "SyncContext",
    "TimeLimitExceeded",
    "cron",
    "download",
    "http",
    "progress_stream",
    "queue",
    "state",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'iii_console' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
