"""What every sweep shares: one run at a time across every worker and scheduler, and a summary event."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from iii_console import LockTaken

#: A sweep holds its lease this long and extends it as it goes; one that dies frees it by then.
LEASE_MS = 5 * 60_000


def run(name: str, tick: Any, ctx: Any, sweep: Callable[[int, Any], dict[str, Any]]) -> dict[str, Any]:
    """Run ``sweep(now_ms, lease)`` under the lease ``cleanup.NAME`` and emit ``cleanup.swept``.

    Cron fires each tick once however many schedulers run, but a sweep slower than its
    interval, or a manual ``cron run`` beside a scheduled one, would still overlap: the
    lease makes the second one a skip, reported as such. ``now_ms`` is the tick's time.
    """
    started = time.monotonic()
    try:
        with ctx.lock(f"cleanup.{name}", LEASE_MS) as lease:
            summary = {"sweep": name, **sweep(tick.scheduled_ms, lease)}
    except LockTaken:
        summary = {"sweep": name, "removed": 0, "skipped": "another run holds the lease"}
    summary["duration_ms"] = round((time.monotonic() - started) * 1000)
    ctx.emit("cleanup.swept", data=summary)
    return summary


def blob_refs(value: Any, out: set[str]) -> set[str]:
    """The sha256 of every blob ref inside a JSON value."""
    if isinstance(value, dict):
        if isinstance(value.get("$blob"), str):
            out.add(value["$blob"].split(":", 1)[-1])
        for v in value.values():
            blob_refs(v, out)
    elif isinstance(value, list):
        for v in value:
            blob_refs(v, out)
    return out
