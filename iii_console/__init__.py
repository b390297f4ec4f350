"""iii-console: steps framework, dev server and live console for background work.

The public API a step file uses::

    from iii_console import Step, http, queue, cron, state

Everything else is runtime machinery.
"""

from iii_console.core.steps import Step, cron, http, queue, state

__all__ = ["Step", "cron", "http", "queue", "state"]
__version__ = "0.1.0"
