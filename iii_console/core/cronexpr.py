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
    kwargs = {"second": "0"}
    for name, raw in zip(names, parts):
        try:
            # Cron's day-of-week counts from Sunday=0 (7 is Sunday too); APScheduler's from
            # Monday=0, so translate before validating, not after.
            value = _cron_dow(raw) if name == "day_of_week" else raw
            _APCron(**{name: value}, timezone=tz)
        except ValueError as exc:
            raise ValueError(f"cron field {name} {raw!r}: {exc}") from None
        kwargs[name] = value
    return _APCron(**kwargs, timezone=tz)


_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _dow_number(text: str) -> int:
    if text.lower() in _DOW_NAMES:
        return _DOW_NAMES.index(text.lower())
    if not text.isdigit() or int(text) > 7:
        raise ValueError(f"{text!r} is not a day of week (0-7 with 0 and 7 = Sunday, or sun-sat)")
    return int(text)


def _cron_dow(field: str) -> str:
    """Cron day-of-week (``*/2``, ``1-5``, ``0,6``, ``fri-sun``) as an explicit list of day names.

    Expanding to names sidesteps APScheduler's Monday=0 numbering, its rejection of ranges that
    start on Sunday (``0-5``) and its different meaning of steps (``*/2``).
    """
    days: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        if step_text and (not step_text.isdigit() or int(step_text) == 0):
            raise ValueError(f"step {step_text!r} must be a positive integer")
        step = int(step_text) if step_text else 1
        if base == "*":
            lo, hi = 0, 6
        elif "-" in base:
            a, b = base.split("-", 1)
            lo, hi = _dow_number(a), _dow_number(b)
            hi = 7 if hi == 0 and lo > 0 else hi  # fri-sun
            if lo > hi:
                raise ValueError(f"range {base!r} runs backwards")
        else:
            lo = _dow_number(base)
            hi = 7 if step_text else lo
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def next_fire(expr: str, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (timezone-aware)."""
    trig = parse_cron(expr, after.tzinfo or timezone.utc)
    from datetime import timedelta

    return trig.get_next_fire_time(None, after + timedelta(microseconds=1))
