"""Small text helpers for the console: ages, durations, statuses, event lines.

Event summaries and colours come from :mod:`iii_console.format`, so an event
reads the same here as in ``iii-console tail``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from iii_console.core.events import Event
from iii_console.core.text import printable
from iii_console.format import TYPE_STYLE, clock, detail, short

STATUS_STYLE = {
    "queued": "blue",
    "running": "yellow",
    "processed": "green",
    "failed": "red",
    "retrying": "dark_orange",
    "redelivered": "dark_orange",
    "throttled": "orange3",
    "dead": "bold red",
}
PRIORITY_STYLE = {"high": "bold magenta", "normal": "", "low": "bright_black"}


def ago(ms: int | float | None, now_ms: int) -> str:
    """``'4s'``, ``'2m05s'``, ``'1h02m'``, ``'3d04h'``; ``'-'`` when unknown."""
    if not ms:
        return "-"
    return span(now_ms - ms)


def span(ms: int | float) -> str:
    s = max(0, int(ms // 1000))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def age(ms: int | float | None, now_ms: int) -> str:
    """A coarse age (``'12s'``, ``'5m'``, ``'3h'``, ``'2d'``): it changes rarely, so tables repaint less."""
    if not ms:
        return "-"
    s = max(0, int((now_ms - ms) // 1000))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def until(ms: int | float | None, now_ms: int) -> str:
    if not ms:
        return "-"
    return "now" if ms <= now_ms else "in " + span(ms - now_ms + 999)


def duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return span(ms)


def hms(ms: int | float | None) -> str:
    """Local wall time of a ms timestamp (``HH:MM:SS``)."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def utc_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def num(n: int | float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def rate(r: float) -> str:
    return f"{r:,.0f}/s" if r >= 100 else f"{r:.1f}/s"


def status(s: str) -> Text:
    return Text(s, style=STATUS_STYLE.get(s, ""))


def progress_bar(done: float, total: float, width: int = 10) -> str:
    """``███░░░░░░░ 30%`` for a ``ctx.progress``."""
    frac = max(0.0, min(1.0, done / total)) if total > 0 else 0.0
    full = round(frac * width)
    return "█" * full + "░" * (width - full) + f" {frac * 100:.0f}%"


def event_line(ev: Event) -> Text:
    """One coloured line per event: time, type, step, trace, summary."""
    style = TYPE_STYLE.get(ev.type, "")
    trace = ev.trace_id[:8] if ev.trace_id else "-" * 8
    line = Text.assemble(
        (clock(ev.ts), "bright_black"),
        "  ",
        (printable(f"{ev.type:<21}"), style),
        " ",
        (printable(f"{(ev.step or '-')[:18]:<18}"), "bold" if ev.step else "bright_black"),
        " ",
        (printable(trace), "bright_black"),
        "  ",
        (printable(detail(ev)), style if ev.type in ("message.failed", "message.dead_lettered", "step.error") else ""),
        no_wrap=True,
        overflow="ellipsis",
    )
    if ev.type == "worker.heartbeat":
        line.stylize("dim")
    return line


def pretty_json(value: Any) -> str:
    try:
        return printable(json.dumps(value, indent=2, default=str, ensure_ascii=False), keep_lines=True)
    except (TypeError, ValueError):
        return printable(repr(value))


def one_line(value: Any, n: int = 60) -> str:
    return printable(short(value, n)) if value is not None else "-"


def plain(value: Any, *, keep_lines: bool = False) -> str:
    """Stored or received text for the screen: control characters escaped (never markup: use it in ``Text``)."""
    return printable("" if value is None else value, keep_lines=keep_lines)


def timed_out(ev: Event) -> bool:
    """A failure by a time limit (hard or soft, or a handler stuck past it)."""
    return ev.error is not None and ev.error.startswith(("TimeLimitExceeded", "SoftTimeLimitExceeded"))


def redis_status(restarts: int, last: Event) -> str:
    """The header's word on the embedded Redis once it has died at least once."""
    at = clock(last.ts)[:8]
    if last.type == "redis.down":
        return f"Redis down since {at}, restarting" + (
            f" ({restarts} restart{'s' if restarts != 1 else ''} so far)" if restarts else ""
        )
    return f"Redis restarted {restarts}× (last {at})"
