"""Cron expressions: 5 fields, or 6 with a leading seconds field.

Parsing is delegated to APScheduler's field parser (so the scheduler and validation
agree), but time is always passed in: ``next_fire(expr, after)`` never reads the clock.
"""

from __future__ import annotations

from datetime import datetime, timezone

from apscheduler.triggers.cron import CronTrigger as _APCron

FIELDS5 = ("minute", "hour", "day", "month", "day_of_week")
FIELDS6 = ("second", *FIELDS5)


def parse_cron(expr: str, tz: timezone = timezone.utc) -> _APCron:
    parts = expr.split()
    if len(parts) not in (5, 6):
        raise ValueError(f"cron expression {expr!r} has {len(parts)} fields; expected 5, or 6 with leading seconds")
    names = FIELDS6 if len(parts) == 6 else FIELDS5
    for name, value in zip(names, parts):
        try:
            _APCron(**{name: value}, timezone=tz)
        except ValueError as exc:
            raise ValueError(f"cron field {name} {value!r}: {exc}") from None
    kwargs = dict(zip(names, parts))
    if len(parts) == 5:
        kwargs["second"] = "0"
    # Cron's day-of-week counts from Sunday=0; APScheduler's from Monday=0.
    kwargs["day_of_week"] = _cron_dow(kwargs["day_of_week"])
    return _APCron(**kwargs, timezone=tz)


_DOW = {"0": "sun", "7": "sun", "1": "mon", "2": "tue", "3": "wed", "4": "thu", "5": "fri", "6": "sat"}


def _cron_dow(field: str) -> str:
    out = []
    for part in field.split(","):
        step = ""
        if "/" in part:
            part, step = part.split("/", 1)
            step = "/" + step
        if "-" in part:
            a, b = part.split("-", 1)
            part = f"{_DOW.get(a, a)}-{_DOW.get(b, b)}"
        else:
            part = _DOW.get(part, part)
        out.append(part + step)
    return ",".join(out)


def next_fire(expr: str, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (timezone-aware)."""
    trig = parse_cron(expr, after.tzinfo or timezone.utc)
    from datetime import timedelta

    return trig.get_next_fire_time(None, after + timedelta(microseconds=1))
