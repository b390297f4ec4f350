"""A report is named by its period: asking for the same period again is asking for the same report."""

from __future__ import annotations

import datetime as dt
from typing import Any

GROUP = "reports"


def report_id(start: dt.date, end: dt.date) -> str:
    return f"sales-{start}-{end}"


def request(start: dt.date, end: dt.date, ctx: Any, requested_by: str) -> tuple[str, dict[str, Any] | None]:
    """Enqueue the build of one period's report unless it is built: ``(report id, the built report or None)``.

    Two requests racing each other (two clicks, the cron tick and a person) enqueue once:
    the dedup key is the report's id (and the time of its last failed build, if one failed).
    """
    rid = report_id(start, end)
    built = ctx.state.get(GROUP, rid)
    if built and built.get("status") == "done":
        return rid, built
    # After a failed build, a request builds it again: the key changes with each failure (requests
    # racing after the same failure still enqueue once).
    key = f"{rid}:after-{built['failed_ms']}" if built and built.get("status") == "failed" else rid
    ctx.enqueue(
        "reports.requested", {"report_id": rid, "start": str(start), "end": str(end), "requested_by": requested_by}, dedup_key=key
    )
    return rid, None
