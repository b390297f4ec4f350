"""Cron: remove finished messages older than the retention."""

from __future__ import annotations

import os
import time
from typing import Any

from iii_console import Step, cron

config = Step(
    name="CleanupMessages",
    description="Removes processed messages older than the retention",
    triggers=[cron("*/5 * * * *")],
    flows=["messaging"],
)

RETENTION_S = int(os.environ.get("MESSAGE_RETENTION_S", "3600"))
FINISHED = {"processed"}


def handler(tick: Any, ctx: Any) -> None:
    cutoff = tick.scheduled_ms - RETENTION_S * 1000
    removed = 0
    for key, value in ctx.state.list("messages").items():
        if isinstance(value, dict) and value.get("status") in FINISHED and value.get("processed_ms", 0) < cutoff:
            ctx.state.delete("messages", key)
            removed += 1
    ctx.logger.info("cleanup done", removed=removed, retention_s=RETENTION_S)
