"""Cron expressions and due ticks from tables; time is always passed in, the clock is never read."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from iii_console.core.cronexpr import next_fire, parse_cron
from iii_console.runtime.scheduler import due_ticks

UTC = timezone.utc


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


# 2024-01-01 is a Monday; 2024-01-06 Saturday, 2024-01-07 Sunday.
MONDAY = at(2024, 1, 1, 0, 0, 0)


@pytest.mark.parametrize("expr,after,expected", [
    # minutes and steps
    ("*/15 * * * *", MONDAY, at(2024, 1, 1, 0, 15)),
    ("*/15 * * * *", at(2024, 1, 1, 0, 15), at(2024, 1, 1, 0, 30)),  # strictly after
    ("*/15 * * * *", at(2024, 1, 1, 0, 14, 59, 999999), at(2024, 1, 1, 0, 15)),
    ("*/15 * * * *", at(2024, 1, 1, 23, 50), at(2024, 1, 2, 0, 0)),
    ("0 * * * *", at(2024, 1, 1, 0, 0, 0, 500000), at(2024, 1, 1, 1, 0)),
    ("5,35 * * * *", at(2024, 1, 1, 0, 10), at(2024, 1, 1, 0, 35)),
    ("10-12 3 * * *", at(2024, 1, 1, 3, 10), at(2024, 1, 1, 3, 11)),
    # day of month / month / leap day
    ("0 12 1 * *", MONDAY, at(2024, 1, 1, 12, 0)),
    ("0 0 1 * *", MONDAY, at(2024, 2, 1)),
    ("0 0 29 2 *", MONDAY, at(2024, 2, 29)),
    ("0 0 31 * *", at(2024, 1, 31, 0, 0), at(2024, 3, 31)),
    # day of week, cron numbering: 0 and 7 are Sunday, 1 is Monday
    ("0 0 * * 0", MONDAY, at(2024, 1, 7)),
    ("0 0 * * 7", MONDAY, at(2024, 1, 7)),
    ("0 0 * * 1", MONDAY, at(2024, 1, 8)),
    ("0 0 * * 6", MONDAY, at(2024, 1, 6)),
    ("0 0 * * 6,0", MONDAY, at(2024, 1, 6)),
    ("0 0 * * sun", MONDAY, at(2024, 1, 7)),
    ("0 9 * * 1-5", MONDAY, at(2024, 1, 1, 9, 0)),
    ("0 9 * * 1-5", at(2024, 1, 5, 9, 0), at(2024, 1, 8, 9, 0)),  # Friday -> Monday
    ("0 9 * * mon-fri", at(2024, 1, 5, 9, 0), at(2024, 1, 8, 9, 0)),
    ("0 0 * * 0-2", MONDAY, at(2024, 1, 2)),  # a range starting on Sunday
    ("0 0 * * 5-7", MONDAY, at(2024, 1, 5)),  # a range ending on Sunday (7)
    ("0 0 * * */2", MONDAY, at(2024, 1, 2)),  # Sun, Tue, Thu, Sat
    ("0 0 * * */2", at(2024, 1, 6), at(2024, 1, 7)),
    # six fields: a leading seconds field
    ("*/10 * * * * *", MONDAY, at(2024, 1, 1, 0, 0, 10)),
    ("*/10 * * * * *", at(2024, 1, 1, 0, 0, 55), at(2024, 1, 1, 0, 1, 0)),
    ("30 0 12 * * *", MONDAY, at(2024, 1, 1, 12, 0, 30)),
    ("0 */15 * * * *", at(2024, 1, 1, 0, 0, 1), at(2024, 1, 1, 0, 15, 0)),
    ("15 0 0 * * 0", MONDAY, at(2024, 1, 7, 0, 0, 15)),
])
def test_next_fire(expr, after, expected):
    """Given an expression and a time, when asking for the next fire, then it is the first matching time strictly after."""
    assert next_fire(expr, after) == expected


def test_five_fields_fire_on_second_zero():
    """Given a 5-field expression, when asking for the next fire from mid-minute, then it fires at second 0 of the next minute."""
    assert next_fire("* * * * *", at(2024, 1, 1, 0, 0, 30)) == at(2024, 1, 1, 0, 1, 0)


def test_next_fire_keeps_the_timezone_of_after():
    """Given an `after` in UTC+2, when asking for the next 09:00, then it is 09:00 in that zone."""
    plus2 = timezone(timedelta(hours=2))
    got = next_fire("0 9 * * *", datetime(2024, 1, 1, 8, 0, tzinfo=plus2))
    assert got == datetime(2024, 1, 1, 9, 0, tzinfo=plus2)
    assert got.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("expr,count", [("* * * *", 4), ("* * * * * * *", 7), ("", 0)])
def test_wrong_number_of_fields_is_rejected(expr, count):
    """Given an expression with other than 5 or 6 fields, when parsed, then ValueError says how many it has."""
    with pytest.raises(ValueError, match=f"has {count} fields; expected 5, or 6 with leading seconds"):
        parse_cron(expr)


@pytest.mark.parametrize("expr,field", [
    ("60 * * * *", "minute '60'"),
    ("* 24 * * *", "hour '24'"),
    ("* * 0 * *", "day '0'"),
    ("* * 32 * *", "day '32'"),
    ("* * * 13 *", "month '13'"),
    ("* * * * 8", "day_of_week '8'"),
    ("* * * * 3-1", "day_of_week '3-1'"),
    ("* * * * */0", "day_of_week '*/0'"),
    ("* * * * funday", "day_of_week 'funday'"),
    ("x * * * *", "minute 'x'"),
    ("60 * * * * *", "second '60'"),
    ("0 60 * * * *", "minute '60'"),
])
def test_out_of_range_fields_are_rejected_naming_the_field(expr, field):
    """Given one bad field, when parsed, then ValueError names that field and its value."""
    with pytest.raises(ValueError, match=re.escape(f"cron field {field}: ")):
        parse_cron(expr)


T0 = ms(MONDAY)


@pytest.mark.parametrize("expr,after_ms,until_ms,expected", [
    # (after, until]: the start is excluded, the end included
    ("*/15 * * * *", T0, T0 + 3_600_000, [T0 + 900_000, T0 + 1_800_000, T0 + 2_700_000, T0 + 3_600_000]),
    ("*/15 * * * *", T0 - 1, T0 + 899_999, [T0]),
    ("*/15 * * * *", T0, T0 + 899_999, []),
    ("*/15 * * * *", T0, T0, []),
    ("* * * * * *", T0, T0 + 3000, [T0 + 1000, T0 + 2000, T0 + 3000]),
    ("* * * * * *", T0 + 500, T0 + 2500, [T0 + 1000, T0 + 2000]),
    ("0 9 * * 1-5", T0, T0 + 7 * 86_400_000,
     [T0 + d * 86_400_000 + 9 * 3_600_000 for d in range(5)]),
    ("0 0 * * 0", T0, T0 + 6 * 86_400_000 - 1, []),
    ("0 0 * * 0", T0, T0 + 6 * 86_400_000, [T0 + 6 * 86_400_000]),  # Sunday 00:00 is the end: included
    ("0 0 * * 7", T0 + 6 * 86_400_000, T0 + 13 * 86_400_000, [T0 + 13 * 86_400_000]),  # ... and as the start: excluded
])
def test_due_ticks_are_exactly_those_in_the_half_open_window(expr, after_ms, until_ms, expected):
    """Given an expression and a window (after, until], when listing due ticks, then exactly the scheduled times in it come back."""
    assert due_ticks(expr, after_ms, until_ms) == expected


def test_due_ticks_of_consecutive_windows_neither_skip_nor_repeat():
    """Given an hour cut into uneven consecutive windows, when listing each window's ticks, then together they are every tick once."""
    bounds = [T0, T0 + 1, T0 + 7_000, T0 + 60_000, T0 + 61_000, T0 + 1_799_999, T0 + 1_800_000, T0 + 3_600_000]
    got = [t for a, b in zip(bounds, bounds[1:]) for t in due_ticks("*/30 * * * * *", a, b)]
    assert got == [T0 + i * 30_000 for i in range(1, 121)]


def test_due_ticks_over_a_huge_window_return_a_bounded_prefix():
    """Given a window with 86,400 one-second ticks, when listing due ticks, then a bounded, gap-free prefix comes back."""
    ticks = due_ticks("* * * * * *", T0, T0 + 86_400_000)
    assert 1000 <= len(ticks) <= 1001
    assert ticks == [T0 + i * 1000 for i in range(1, len(ticks) + 1)]
