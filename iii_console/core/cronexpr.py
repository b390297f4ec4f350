"""Cron expressions: 5 fields, 6 with a leading seconds field, 7 with seconds and a trailing year
(Motia's long form), or an ``@daily``-style alias.

Field values are parsed by APScheduler's field parser (ranges, steps, lists, month and day
names), but the meaning is classic cron's where the two differ:

- day of week counts from Sunday = 0 (7 is Sunday too), not APScheduler's Monday = 0;
- when both day of month and day of week are restricted (neither starts with ``*``), a
  day matching *either* fires, as in Vixie cron and POSIX (``0 0 1 * mon`` is the 1st of
  every month and every Monday); APScheduler alone would require both;
- digits are ASCII only (APScheduler's ``\\d`` would take ``٣`` for 3);
- an expression that no date can ever match (``0 0 30 2 *``) is an error, not a step
  that silently never runs.

Time is always passed in: ``next_fire(expr, after)`` never reads the clock. Times are in
the timezone of ``after`` (the scheduler passes UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache

from apscheduler.triggers.cron import CronTrigger as _APCron

FIELDS5 = ("minute", "hour", "day", "month", "day_of_week")
FIELDS6 = ("second", *FIELDS5)
#: Motia's (the Rust ``cron`` crate's) long form: seconds first, year last.
FIELDS7 = (*FIELDS6, "year")

#: The nicknames of Vixie cron, as the 5-field expressions they stand for.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: A fixed start for the "can this ever fire" check, so validation never reads the clock.
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression: one trigger, or two whose union is the schedule (day-of-month OR day-of-week)."""

    expression: str
    triggers: tuple[_APCron, ...]

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (timezone-aware), ``None`` if there is none."""
        start = after + timedelta(microseconds=1)
        found = [t for t in (trig.get_next_fire_time(None, start) for trig in self.triggers) if t is not None]
        return min(found) if found else None


def parse_cron(expr: str, tz: tzinfo = UTC) -> CronSchedule:
    """Parse ``expr``; a mistake raises ``ValueError`` naming the field and its value."""
    return _parse(expr, tz)


@lru_cache(maxsize=256)
def _parse(expr: str, tz: tzinfo) -> CronSchedule:
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise ValueError("cron expression '@reboot' is not supported: cron steps run on a schedule, not at start-up")
        if text.lower() not in ALIASES:
            raise ValueError(f"cron expression {expr!r} is not a known alias; use one of {', '.join(ALIASES)}")
        text = ALIASES[text.lower()]
    parts = text.split()
    if len(parts) not in (5, 6, 7):
        raise ValueError(
            f"cron expression {expr!r} has {len(parts)} fields; expected 5, 6 with leading seconds, "
            f"or 7 with leading seconds and a trailing year"
        )
    names = {5: FIELDS5, 6: FIELDS6, 7: FIELDS7}[len(parts)]
    kwargs = {"second": "0"}
    for name, raw in zip(names, parts):
        try:
            if not raw.isascii():
                raise ValueError("only ASCII letters, digits and * , - / are allowed")
            # Cron's day-of-week counts from Sunday=0 (7 is Sunday too); APScheduler's from
            # Monday=0, so translate before validating, not after.
            value = _cron_dow(raw) if name == "day_of_week" else raw
            _APCron(**{name: value}, timezone=tz)
        except ValueError as exc:
            raise ValueError(f"cron field {name} {raw!r}: {exc}") from None
        kwargs[name] = value
    given = dict(zip(names, parts))
    if given["day"].startswith("*") or given["day_of_week"].startswith("*"):
        triggers: tuple[_APCron, ...] = (_APCron(**kwargs, timezone=tz),)
    else:
        triggers = (_APCron(**{**kwargs, "day_of_week": "*"}, timezone=tz), _APCron(**{**kwargs, "day": "*"}, timezone=tz))
    # A half of the day-of-month OR day-of-week union that no date matches (`0 0 30 2 mon`: the 30th of
    # February) is dropped: asked on every tick, it searched every year up to 9999 first (0.3 s each time).
    epoch = _EPOCH.astimezone(tz)
    triggers = tuple(t for t in triggers if t.get_next_fire_time(None, epoch) is not None)
    if not triggers:
        raise ValueError(f"cron expression {expr!r} never fires: no date matches its day and month fields")
    schedule = CronSchedule(expr, triggers)
    if len(parts) == 7 and schedule.next_after(datetime.now(tz)) is None:
        raise ValueError(f"cron expression {expr!r} never fires again: every year it names is past")
    return schedule


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
    return parse_cron(expr, after.tzinfo or UTC).next_after(after)
