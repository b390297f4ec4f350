"""Reading a fan-in group's progress from its record in Redis (written by the queue's scripts)."""

from __future__ import annotations

from typing import Any

from iii_console.core.keys import Keys, as_str

_COUNTS = ("total", "pending", "ok", "failed", "dead")


def read_group(client: Any, keys: Keys, group_id: str) -> dict[str, Any] | None:
    """``{group_id, total, settled, pending, ok, failed, dead, percent, completed_ms}``, or None if unknown.

    The record is kept until 7 days after the group completes.
    """
    raw = client.hmget(keys.group(group_id), *_COUNTS, "completed_ms", "then", "topic")
    if raw[0] is None:
        return None
    counts = {k: int(as_str(v)) if v is not None else 0 for k, v in zip(_COUNTS, raw)}
    total = counts["total"]
    settled = total - counts["pending"]
    return {
        "group_id": group_id,
        **counts,
        "settled": settled,
        "percent": round(100.0 * settled / total, 1) if total else 100.0,
        "completed_ms": int(as_str(raw[5])) if raw[5] is not None else None,
        "topic": as_str(raw[7]) if raw[7] is not None else None,
        "then": as_str(raw[6]) if raw[6] is not None else None,
    }
