"""Delete finished entries (``status`` done, processed, failed or cancelled) of the watched state groups
whose ``finished_ms`` is older than the retention; running ones are never touched."""

from typing import Any

from cleanupjobs import settings
from cleanupjobs.sweep import run

from iii_console import CronTick, Step, SyncContext, cron

config = Step(name="PruneState", triggers=[cron(settings.schedule("*/15 * * * *"))], flows=["cleanup"])


def handler(tick: CronTick, ctx: SyncContext) -> Any:
    def sweep(now_ms: int, lease: Any) -> dict[str, Any]:
        cutoff = now_ms - settings.STATE_MAX_AGE_S * 1000
        removed = 0
        for group in settings.STATE_GROUPS:
            for key, value in ctx.state.list(group).items():
                if (
                    isinstance(value, dict)
                    and value.get("status") in settings.FINISHED
                    and isinstance(value.get("finished_ms"), (int, float))
                    and value["finished_ms"] < cutoff
                ):
                    ctx.state.delete(group, key)
                    removed += 1
        return {"removed": removed, "groups": settings.STATE_GROUPS}

    return run("state", tick, ctx, sweep)
