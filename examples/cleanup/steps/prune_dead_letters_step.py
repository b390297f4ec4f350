"""Delete dead letters whose last failure is older than the retention, in every dead-letter queue."""

from typing import Any

from iii_console import CronTick, Step, SyncContext, cron

from cleanupjobs import settings
from cleanupjobs.sweep import run

config = Step(name="PruneDeadLetters", triggers=[cron(settings.schedule("30 3 * * *"))], flows=["cleanup"])


def handler(tick: CronTick, ctx: SyncContext) -> Any:
    def sweep(now_ms: int, lease: Any) -> dict[str, Any]:
        return {"removed": ctx.dead_letters.purge_before(now_ms - settings.DEAD_LETTER_MAX_AGE_S * 1000)}

    return run("dead_letters", tick, ctx, sweep)
