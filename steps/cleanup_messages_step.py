"""Cron: remove finished messages (processed, or failed for good) older than the retention."""

from __future__ import annotations

import os

from iii_console import CronTick, Step, SyncContext, cron

config = Step(
    name="CleanupMessages",
    description="Removes finished messages older than the retention",
    triggers=[cron("*/5 * * * *")],
    flows=["messaging"],
)

RETENTION_S = int(os.environ.get("MESSAGE_RETENTION_S", "3600"))
#: Statuses a message does not leave. `queued`, `processing` and `retrying` are still on
#: their way; a failed message's payload stays in the dead-letter queue after this.
FINISHED = {"processed", "failed"}


def handler(tick: CronTick, ctx: SyncContext) -> None:
    # The tick's own time, not the clock: a late tick removes what its schedule says.
    cutoff = tick.scheduled_ms - RETENTION_S * 1000
    removed = 0
    for key, value in ctx.state.list("messages").items():
        if isinstance(value, dict) and value.get("status") in FINISHED and value.get("finished_ms", 0) < cutoff:
            ctx.state.delete("messages", key)
            removed += 1
    ctx.logger.info("cleanup done", removed=removed, retention_s=RETENTION_S)
