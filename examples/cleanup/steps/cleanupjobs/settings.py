"""Retention and schedules, from the environment (``.env`` beside ``iii-config.yaml`` works too)."""

from __future__ import annotations

import os

DAY_S = 86_400


def seconds(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def schedule(default: str) -> str:
    """A sweep's cron expression; ``CLEANUP_CRON`` runs every sweep on one (``*/10 * * * * *`` to watch them)."""
    return os.environ.get("CLEANUP_CRON") or default


BLOB_MAX_AGE_S = seconds("CLEANUP_BLOB_MAX_AGE_S", 7 * DAY_S)
ROW_MAX_AGE_S = seconds("CLEANUP_ROW_MAX_AGE_S", 30 * DAY_S)
STATE_MAX_AGE_S = seconds("CLEANUP_STATE_MAX_AGE_S", 1 * DAY_S)
DEAD_LETTER_MAX_AGE_S = seconds("CLEANUP_DEAD_LETTER_MAX_AGE_S", 14 * DAY_S)
ROW_BATCH = seconds("CLEANUP_ROW_BATCH", 1000)
#: State groups whose finished entries are pruned: values with ``status`` in FINISHED and ``finished_ms``.
STATE_GROUPS = [g for g in os.environ.get("CLEANUP_STATE_GROUPS", "jobs,imports,exports").split(",") if g]
FINISHED = {"done", "processed", "failed", "cancelled"}
