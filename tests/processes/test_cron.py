"""Cron: expressions and due ticks from tables (time passed in, the clock never read); the
scheduler's misfire accounting on real Redis with a clock of the test's own; and several real
scheduler processes against one Redis."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from iii_console.core.cronexpr import next_fire, parse_cron
from iii_console.runtime.scheduler import due_ticks

from ..helpers import events, make_project, wait_for

UTC = UTC


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


# 2024-01-01 is a Monday; 2024-01-06 Saturday, 2024-01-07 Sunday.
MONDAY = at(2024, 1, 1, 0, 0, 0)


@pytest.mark.parametrize(
    "expr,after,expected",
    [
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
        # month names and ranges of them
        ("0 0 1 jan,jul *", MONDAY, at(2024, 7, 1)),
        ("0 0 1 FEB-APR *", MONDAY, at(2024, 2, 1)),
        ("0 0 1 */4 *", MONDAY, at(2024, 5, 1)),  # months 1, 5, 9
        ("0 0-23/6 * * *", MONDAY, at(2024, 1, 1, 6)),
        ("5/15 * * * *", MONDAY, at(2024, 1, 1, 0, 5)),
        ("0 0 1,15 * *", MONDAY, at(2024, 1, 15)),
        ("0 0 * * MON", MONDAY, at(2024, 1, 8)),
        ("0 0 * * 1/2", MONDAY, at(2024, 1, 3)),  # Mon, Wed, Fri
        # day of month and day of week both restricted: either one fires (cron's OR), ...
        ("0 0 1 * mon", MONDAY, at(2024, 1, 8)),
        ("0 0 1 * mon", at(2024, 1, 29), at(2024, 2, 1)),
        ("0 0 13 * fri", MONDAY, at(2024, 1, 5)),
        ("0 0 30 2 mon", MONDAY, at(2024, 2, 5)),  # no 30 February, but Mondays in February
        # ... unless one of them starts with `*`: then both must match
        ("0 0 */2 * mon", MONDAY, at(2024, 1, 15)),  # odd days that are Mondays
        # aliases
        ("@hourly", MONDAY, at(2024, 1, 1, 1)),
        ("@daily", MONDAY, at(2024, 1, 2)),
        ("@midnight", MONDAY, at(2024, 1, 2)),
        ("@weekly", MONDAY, at(2024, 1, 7)),
        ("@monthly", MONDAY, at(2024, 2, 1)),
        ("@yearly", MONDAY, at(2025, 1, 1)),
        ("@annually", MONDAY, at(2025, 1, 1)),
        ("@DAILY", MONDAY, at(2024, 1, 2)),
    ],
)
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


@pytest.mark.parametrize("expr,count", [("* * * *", 4), ("* * * * * * * *", 8), ("", 0)])
def test_wrong_number_of_fields_is_rejected(expr, count):
    """Given an expression with other than 5, 6 or 7 fields, when parsed, then ValueError says how many it has."""
    with pytest.raises(
        ValueError, match=f"has {count} fields; expected 5, 6 with leading seconds, or 7 with leading seconds and a trailing year"
    ):
        parse_cron(expr)


@pytest.mark.parametrize(
    "expr,field",
    [
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
        ("*/0 * * * *", "minute '*/0'"),
        ("1-60 * * * *", "minute '1-60'"),
        ("0 0 * feb-jan *", "month 'feb-jan'"),
        ("0 0 * 0 *", "month '0'"),
        ("0 0 L * *", "day 'L'"),
        ("0 0 ? * *", "day '?'"),
        ("0 0 * * 1#2", "day_of_week '1#2'"),
        ("0 0 * * sat-mon", "day_of_week 'sat-mon'"),
        ("0 0 * * 1,,2", "day_of_week '1,,2'"),
        ("\u0663 * * * *", "minute '\u0663'"),  # ARABIC-INDIC DIGIT THREE: a digit to a regex's \d, not to cron
    ],
)
def test_out_of_range_fields_are_rejected_naming_the_field(expr, field):
    """Given one bad field, when parsed, then ValueError names that field and its value."""
    with pytest.raises(ValueError, match=re.escape(f"cron field {field}: ")):
        parse_cron(expr)


@pytest.mark.parametrize(
    "expr,words",
    [
        ("@reboot", "'@reboot' is not supported"),
        ("@every 5m", "'@every 5m' is not a known alias; use one of @yearly"),
        ("@fortnightly", "not a known alias"),
        ("0 0 30 2 *", "'0 0 30 2 *' never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 0 0 31 2 *", "never fires"),
        ("0 0 0 1 1 * 2001", "never fires again: every year it names is past"),
        ("0 0 0 1 1 * 2010-2020", "never fires again"),
    ],
)
def test_unsupported_aliases_and_expressions_that_never_fire_are_rejected(expr, words):
    """Given an alias cron has no schedule for, or fields no date matches, when parsed, then ValueError says so."""
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_cron(expr)


def test_an_or_half_no_date_matches_costs_nothing_on_each_tick():
    """Given `0 0 30 2 mon` (the 30th of February, or a Monday in February), when parsed, then the half no date
    matches is dropped (asked on every tick, it searched every year up to 9999: 0.3 s of CPU each loop), and the
    next fire is the next Monday in February."""
    sched = parse_cron("0 0 30 2 mon")
    assert len(sched.triggers) == 1
    assert sched.next_after(at(2025, 1, 1)) == at(2025, 2, 3)


def test_a_leap_day_is_rare_but_not_never():
    """Given 29 February, when asking for the next fire from 2025, then it is in 2028."""
    assert next_fire("0 0 29 2 *", at(2025, 1, 1)) == at(2028, 2, 29)


def test_a_bad_cron_expression_is_reported_with_the_step_and_field(tmp_path):
    """Given a step whose cron has a bad day of week, when checked, then the error names file, step, field and value."""
    from iii_console.core.discovery import discover

    make_project(
        tmp_path,
        {
            "bad_step.py": """
        config = {"name": "Nightly", "triggers": [{"type": "cron", "cron": "0 3 * * 8"}]}
        def handler(ctx): pass
    """
        },
    )
    [err] = discover(tmp_path / "steps").errors
    text = str(err)
    assert "bad_step.py" in text and "Nightly" in text and "cron" in text and "day_of_week '8'" in text


T0 = ms(MONDAY)


@pytest.mark.parametrize(
    "expr,after_ms,until_ms,expected",
    [
        # (after, until]: the start is excluded, the end included
        ("*/15 * * * *", T0, T0 + 3_600_000, [T0 + 900_000, T0 + 1_800_000, T0 + 2_700_000, T0 + 3_600_000]),
        ("*/15 * * * *", T0 - 1, T0 + 899_999, [T0]),
        ("*/15 * * * *", T0, T0 + 899_999, []),
        ("*/15 * * * *", T0, T0, []),
        ("* * * * * *", T0, T0 + 3000, [T0 + 1000, T0 + 2000, T0 + 3000]),
        ("* * * * * *", T0 + 500, T0 + 2500, [T0 + 1000, T0 + 2000]),
        ("0 9 * * 1-5", T0, T0 + 7 * 86_400_000, [T0 + d * 86_400_000 + 9 * 3_600_000 for d in range(5)]),
        ("0 0 * * 0", T0, T0 + 6 * 86_400_000 - 1, []),
        ("0 0 * * 0", T0, T0 + 6 * 86_400_000, [T0 + 6 * 86_400_000]),  # Sunday 00:00 is the end: included
        ("0 0 * * 7", T0 + 6 * 86_400_000, T0 + 13 * 86_400_000, [T0 + 13 * 86_400_000]),  # ... and as the start: excluded
    ],
)
def test_due_ticks_are_exactly_those_in_the_half_open_window(expr, after_ms, until_ms, expected):
    """Given an expression and a window (after, until], when listing due ticks, then exactly the scheduled times in it come back."""
    assert due_ticks(expr, after_ms, until_ms) == expected


def test_due_ticks_of_consecutive_windows_neither_skip_nor_repeat():
    """Given an hour cut into uneven consecutive windows, when listing each window's ticks, then together they are every tick once."""
    bounds = [T0, T0 + 1, T0 + 7_000, T0 + 60_000, T0 + 61_000, T0 + 1_799_999, T0 + 1_800_000, T0 + 3_600_000]
    got = [t for a, b in itertools.pairwise(bounds) for t in due_ticks("*/30 * * * * *", a, b)]
    assert got == [T0 + i * 30_000 for i in range(1, 121)]


def test_due_ticks_over_a_huge_window_return_a_bounded_prefix():
    """Given a window with 86,400 one-second ticks, when listing due ticks, then a bounded, gap-free prefix comes back."""
    ticks = due_ticks("* * * * * *", T0, T0 + 86_400_000)
    assert 1000 <= len(ticks) <= 1001
    assert ticks == [T0 + i * 1000 for i in range(1, len(ticks) + 1)]


# --- the scheduler on real Redis, with a clock of the test's own ------------------------------

TICKER = """
from iii_console import Step, cron
config = Step(name="Ticker", triggers=[cron("* * * * * *")])
def handler(tick, ctx):
    ctx.state.update("ticks", "Ticker", [{"type": "increment", "path": str(tick.scheduled_ms)}])
"""


class Clock:
    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@pytest.fixture
def schedulers(tmp_path, redis_url):
    """Make Scheduler objects (not started: the test drives ``run_once``) on one project and Redis."""
    from iii_console.adapters.queue.producer import Producer, subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.runtime.scheduler import Scheduler
    from iii_console.runtime.services import Services

    cfg = make_project(tmp_path, {"ticker_step.py": TICKER}, redis_url=redis_url)
    steps = discover(cfg.steps_path)
    opened: list[Services] = []

    def make(clock: Clock, **kw):
        svc = Services.open(cfg, "scheduler")
        opened.append(svc)
        prod = Producer(svc.client, svc.keys, cfg, subscriptions_for(steps.steps), svc.emitter)
        return Scheduler(svc, steps.cron_steps(), prod, clock=clock, **kw)

    def flush():
        for svc in opened:
            svc.sink.flush()

    make.flush = flush
    yield make
    for svc in opened:
        svc.close()


def run_until(sched, clock: Clock, until_ms: int, step_ms: int = 250) -> None:
    while clock.ms < until_ms:
        clock.ms = min(until_ms, clock.ms + step_ms)
        sched.run_once()


def fired(r, keys) -> list[int]:
    return sorted(e.data["scheduled_ms"] for e in events(r, keys, "cron.fired"))


def test_two_schedulers_on_one_clock_fire_each_tick_once(schedulers, r, keys):
    """Given two schedulers taking turns over 30 s, when each runs its loop, then every tick is enqueued once, by one of them."""
    clock = Clock(T0)
    a, b = schedulers(clock), schedulers(clock)
    for _ in range(120):
        clock.ms += 250
        a.run_once()
        b.run_once()
    schedulers.flush()
    assert fired(r, keys) == [T0 + i * 1000 for i in range(1, 31)]
    queued = r.llen(f"{keys.dramatiq_namespace}:_cron--Ticker--normal")
    assert queued == 30


def test_cron_fired_names_the_tick_and_the_message_it_enqueued(schedulers, r, keys):
    """Given a tick fired 400 ms late, when its events are read, then cron.fired carries scheduled and fired time, drift and the message."""
    clock = Clock(T0)
    s = schedulers(clock)
    s.run_once()
    clock.ms = T0 + 1400
    s.run_once()
    schedulers.flush()
    [ev] = events(r, keys, "cron.fired")
    [enq] = events(r, keys, "message.enqueued")
    assert ev.data == {"expression": "* * * * * *", "scheduled_ms": T0 + 1000, "fired_ms": T0 + 1400, "drift_ms": 400}
    assert (ev.step, ev.topic, ev.queue) == ("Ticker", "_cron.Ticker", "_cron--Ticker--normal")
    assert ev.message_id == enq.message_id and ev.trace_id == enq.trace_id != ""
    assert json.loads(r.get(keys.cron_last("Ticker", "* * * * * *"))) == {
        "scheduled_ms": T0 + 1000,
        "fired_ms": T0 + 1400,
        "expression": "* * * * * *",
    }


def test_a_restarted_scheduler_fires_the_ticks_it_missed_within_the_grace(schedulers, r, keys):
    """Given the only scheduler stopped for 10 s, when a new one starts, then the 10 missed ticks fire late and none is skipped."""
    clock = Clock(T0)
    first = schedulers(clock)
    run_until(first, clock, T0 + 5000)
    clock.ms = T0 + 15_300  # stopped for ~10 s
    second = schedulers(clock)
    second.run_once()
    schedulers.flush()
    assert fired(r, keys) == [T0 + i * 1000 for i in range(1, 16)]
    late = [e for e in events(r, keys, "cron.fired") if e.data["scheduled_ms"] > T0 + 5000]
    assert [e.data["drift_ms"] for e in late] == [15_300 - i * 1000 for i in range(6, 16)]
    assert not events(r, keys, "cron.skipped")


def test_ticks_missed_by_more_than_the_grace_are_reported_as_skipped_in_one_event(schedulers, r, keys):
    """Given the only scheduler stopped for 3 minutes (grace 60 s), when one starts again, then the ticks older than the grace are one cron.skipped and the rest fire."""
    clock = Clock(T0)
    first = schedulers(clock)
    run_until(first, clock, T0 + 3000)
    clock.ms = T0 + 183_000
    second = schedulers(clock)
    second.run_once()
    schedulers.flush()
    [skipped] = events(r, keys, "cron.skipped")
    # ticks 4 .. 122 s are more than 60 s old at 183 s; 123 .. 183 s are within the grace
    assert skipped.data["count"] == 119 and skipped.data["scheduled_ms"] == T0 + 4000
    assert skipped.data["last_scheduled_ms"] == T0 + 122_000 and skipped.data["last_fired_ms"] == T0 + 3000
    assert skipped.step == "Ticker" and skipped.trace_id and "within 60 s" in skipped.data["reason"]
    assert fired(r, keys) == [T0 + i * 1000 for i in [1, 2, 3, *range(123, 184)]]
    # Every tick is accounted for exactly once: fired or skipped, never both, never neither.
    markers = {int(k.rsplit(b":", 1)[1]): r.get(k) for k in r.scan_iter(match=f"{keys.prefix}cron:Ticker:*")}
    assert sorted(markers) == [T0 + i * 1000 for i in range(1, 184)]
    assert {t for t, v in markers.items() if v == b"skipped"} == set(range(T0 + 4000, T0 + 122_001, 1000))


def test_the_skipped_metric_counts_ticks_not_events(schedulers, r, keys):
    """Given one cron.skipped event for 119 ticks, when metrics are read, then the skipped counter is 119."""
    from iii_console.core import metrics

    clock = Clock(T0)
    run_until(schedulers(clock), clock, T0 + 3000)
    clock.ms = T0 + 183_000
    schedulers(clock).run_once()
    schedulers.flush()
    counts, _ = metrics.read(r, keys)
    assert sum(n for (t, _topic, step), n in counts.items() if t == "cron.skipped" and step == "Ticker") == 119
    assert sum(n for (t, _topic, step), n in counts.items() if t == "cron.fired" and step == "Ticker") == 64


def test_a_long_outage_is_accounted_back_to_the_look_back_only(schedulers, r, keys):
    """Given no scheduler for two hours, when one starts, then only the look-back (5 min) is accounted tick by tick, and the event says when the last tick fired."""
    clock = Clock(T0)
    run_until(schedulers(clock), clock, T0 + 2000)
    clock.ms = T0 + 7_200_000
    schedulers(clock).run_once()
    schedulers.flush()
    [skipped] = events(r, keys, "cron.skipped")
    assert skipped.data["scheduled_ms"] == T0 + 7_200_000 - 300_000 + 1000
    # the look-back holds 300 ticks: 239 more than 60 s old, 61 within the grace
    assert skipped.data["count"] == 239 and skipped.data["last_fired_ms"] == T0 + 2000
    assert len(fired(r, keys)) == 2 + 61


def test_a_stalled_scheduler_reports_nothing_its_peer_fired_even_after_the_markers_expired(schedulers, r, keys):
    """Given A stopped for 15 minutes while B fired every tick (and the tick markers expired), when A continues, then A reports no skipped tick."""
    a_clock, b_clock = Clock(T0), Clock(T0)
    a, b = schedulers(a_clock), schedulers(b_clock)
    run_until(a, a_clock, T0 + 3000)
    b.run_once()
    run_until(b, b_clock, T0 + 900_000, step_ms=1000)
    for k in list(r.scan_iter(match=f"{keys.prefix}cron:Ticker:*")):
        r.delete(k)  # as if their 10-minute TTL had run out
    a_clock.ms = b_clock.ms
    a.run_once()
    schedulers.flush()
    assert not events(r, keys, "cron.skipped")
    assert fired(r, keys) == [T0 + i * 1000 for i in range(1, 901)]


def test_a_changed_expression_does_not_resume_from_the_old_ones_last_tick(schedulers, r, keys):
    """Given cron-last written under another expression an hour ago, when a scheduler starts, then it starts from now: nothing skipped, nothing fired late."""
    r.set(
        keys.cron_last("Ticker", "0 * * * *"),
        json.dumps({"scheduled_ms": T0 - 3_600_000, "fired_ms": T0 - 3_600_000, "expression": "0 * * * *"}),
    )
    clock = Clock(T0)
    run_until(schedulers(clock), clock, T0 + 2500)
    schedulers.flush()
    assert not events(r, keys, "cron.skipped")
    assert fired(r, keys) == [T0 + 1000, T0 + 2000]


def test_ticks_a_peer_fired_are_never_reported_skipped_even_if_cron_last_lags(schedulers, r, keys):
    """Given B fired every tick for 130 s but cron-last still says T0 (B died before writing it), when A catches up from T0, then each tick's marker stops A: nothing skipped, nothing fired twice."""
    b_clock = Clock(T0)
    b = schedulers(b_clock)
    b.run_once()  # starts at T0, so its first tick is T0 + 1 s
    run_until(b, b_clock, T0 + 130_000, step_ms=1000)
    r.set(keys.cron_last("Ticker", "* * * * * *"), json.dumps({"scheduled_ms": T0, "fired_ms": T0, "expression": "* * * * * *"}))
    a = schedulers(Clock(T0 + 130_000))
    a.run_once()
    schedulers.flush()
    assert not events(r, keys, "cron.skipped")
    assert fired(r, keys) == [T0 + i * 1000 for i in range(1, 131)]


TWO_TRIGGERS = """
from iii_console import Step, cron
config = Step(name="Twice", triggers=[cron("* * * * * *"), cron("*/2 * * * * *")])
def handler(tick, ctx):
    pass
"""


def test_a_scheduler_whose_clock_runs_ahead_by_more_than_a_markers_life_never_fires_a_tick_twice(
    schedulers, r, keys, monkeypatch
):
    """Given two schedulers, one whose clock is 2 s ahead, and tick markers that live 0.1 s (standing in for a clock
    620 s ahead of markers that live 600 s), when both run for 20 s, then every tick is enqueued exactly once: the
    fast one claims each tick early and its marker expires before the on-time one gets there, but no tick is ever
    fired at or before the last one fired."""
    import time as _time

    from iii_console.runtime import scheduler as sched_mod

    monkeypatch.setattr(sched_mod, "TICK_MARKER_TTL_MS", 100)
    on_time, fast = Clock(T0), Clock(T0 + 2000)
    a, b = schedulers(on_time), schedulers(fast)
    a.run_once()
    b.run_once()
    for _ in range(80):  # 20 s of both clocks, in real time steps long enough for markers to expire
        on_time.ms += 250
        fast.ms += 250
        b.run_once()
        _time.sleep(0.02)
        a.run_once()
    schedulers.flush()
    counts = Counter(fired(r, keys))
    assert counts and set(counts.values()) == {1}, {t - T0: n for t, n in counts.items() if n > 1}
    assert r.llen(f"{keys.dramatiq_namespace}:_cron--Ticker--normal") == len(counts)


def test_schedulers_judge_ticks_by_redis_clock_not_their_own(schedulers, r, keys):
    """Given a scheduler whose host clock is 620 s ahead of Redis, when it runs with the default (Redis-corrected)
    clock, then it fires the tick that is due by Redis's clock, not one 620 s early."""
    import time as _time

    from iii_console.runtime.scheduler import RedisClock

    s = schedulers(Clock(0))
    s.clock = RedisClock(s.services.client, local=lambda: _time.time() + 620)
    s.run_once()
    deadline = _time.monotonic() + 5
    while not fired(r, keys) and _time.monotonic() < deadline:
        _time.sleep(s.run_once())
    schedulers.flush()
    secs, micros = r.time()
    redis_now = secs * 1000 + micros // 1000
    [first, *_] = fired(r, keys)
    assert redis_now - 3000 <= first <= redis_now, first - redis_now


def test_a_step_of_the_hosts_wall_clock_does_not_move_the_schedulers_clock(r):
    """Given a scheduler's clock synced with Redis on a host whose clock is an hour slow, when the host's clock is
    set right (an NTP step) between two syncs, then the scheduler's clock still reads Redis's time (carried
    forward by the wall clock, it jumped an hour ahead: an hour of ticks fired early, then none for an hour)."""
    import time as _time

    from iii_console.runtime.scheduler import RedisClock

    def redis_now() -> float:
        secs, micros = r.time()
        return secs + micros / 1e6

    skew = [-3600.0]
    clock = RedisClock(r, local=lambda: _time.time() + skew[0])
    assert abs(clock() - redis_now()) < 0.5
    skew[0] = 0.0  # corrected, within the sync interval
    assert abs(clock() - redis_now()) < 0.5
    skew[0] = 7200.0  # or set two hours ahead
    assert abs(clock() - redis_now()) < 0.5


def test_each_cron_trigger_of_a_step_fires_its_own_ticks_and_resumes_from_its_own_last_one(tmp_path, redis_url, r, keys):
    """Given a step with two cron triggers whose ticks coincide every 2 s, when a scheduler runs 10 s, stops for 10 s
    and another starts, then every tick of each trigger fires once, the shared ones twice (once per trigger)."""
    from iii_console.adapters.queue.producer import Producer, subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.runtime.scheduler import Scheduler
    from iii_console.runtime.services import Services

    cfg = make_project(tmp_path, {"twice_step.py": TWO_TRIGGERS}, redis_url=redis_url)
    steps = discover(cfg.steps_path)
    clock = Clock(T0)
    for run in (lambda s: run_until(s, clock, T0 + 10_000), lambda s: s.run_once()):
        svc = Services.open(cfg, "scheduler")
        try:
            run(
                Scheduler(
                    svc,
                    steps.cron_steps(),
                    Producer(svc.client, svc.keys, cfg, subscriptions_for(steps.steps), svc.emitter),
                    clock=clock,
                )
            )
        finally:
            svc.close()
        clock.ms = T0 + 20_000  # no scheduler for 10 s: the next one fires those ticks late
    by_expr = Counter((e.data["expression"], e.data["scheduled_ms"]) for e in events(r, keys, "cron.fired"))
    assert sorted(t - T0 for (x, t) in by_expr if x == "* * * * * *") == [i * 1000 for i in range(1, 21)]
    assert sorted(t - T0 for (x, t) in by_expr if x == "*/2 * * * * *") == [i * 1000 for i in range(2, 21, 2)]
    assert set(by_expr.values()) == {1}
    assert not events(r, keys, "cron.skipped")


# --- real scheduler processes -------------------------------------------------------------------


def _ticks_run(r, keys) -> dict[int, int]:
    return {int(k): v for k, v in json.loads(r.hget(keys.state_group("ticks"), "Ticker") or "{}").items()}


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_scheduler_processes_fire_every_tick_exactly_once(n, tmp_path, redis_url, r, keys):
    """Given n `--role scheduler` processes and a worker on one Redis and a cron every second, when they run for ~10 ticks, then each tick from the first to the last fired once, none is missing, and each ran once."""
    from ..helpers import start_cli

    make_project(tmp_path, {"ticker_step.py": TICKER}, "server:\n  port: 0\n", redis_url=redis_url)
    procs = [start_cli(tmp_path, "--no-ui", "--role", "scheduler") for _ in range(n)]
    worker = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        try:
            wait_for(lambda: len(events(r, keys, "cron.fired")) >= 10, timeout=40, what="10 ticks")
        finally:
            codes = [p.stop() for p in procs]  # the schedulers; the worker runs on until every tick is handled
        assert codes == [0] * n
        ev = events(r, keys, "cron.fired")
        scheduled = sorted(e.data["scheduled_ms"] for e in ev)
        assert len(scheduled) == len(set(scheduled)), Counter(scheduled).most_common(3)  # no tick twice
        assert scheduled == list(range(scheduled[0], scheduled[-1] + 1, 1000))  # and none missing
        assert all(
            e.data["fired_ms"] >= e.data["scheduled_ms"] and e.data["drift_ms"] == e.data["fired_ms"] - e.data["scheduled_ms"]
            for e in ev
        )
        assert not events(r, keys, "cron.skipped")
        wait_for(lambda: set(_ticks_run(r, keys)) >= set(scheduled), timeout=20, what="every tick handled")
    finally:
        assert worker.stop() == 0
    assert set(_ticks_run(r, keys).values()) == {1}


@pytest.mark.slow
def test_a_scheduler_process_restarted_after_a_pause_fires_the_ticks_it_missed(tmp_path, redis_url, r, keys):
    """Given the only scheduler process stopped for ~3 s, when it starts again, then the ticks of the pause fire late (drift >= 1 s), so the sequence has no gap and nothing is skipped."""
    from ..helpers import start_cli

    make_project(tmp_path, {"ticker_step.py": TICKER}, "server:\n  port: 0\n", redis_url=redis_url)
    worker = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        sched = start_cli(tmp_path, "--no-ui", "--role", "scheduler")
        wait_for(lambda: len(events(r, keys, "cron.fired")) >= 3, timeout=30, what="3 ticks")
        assert sched.stop() == 0
        stopped_ms = int(time.time() * 1000)
        time.sleep(3)
        sched = start_cli(tmp_path, "--no-ui", "--role", "scheduler")
        wait_for(lambda: max(fired(r, keys)) > stopped_ms + 5000, timeout=30, what="ticks after the restart")
        assert sched.stop() == 0
    finally:
        worker.stop()
    ticks = fired(r, keys)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 1000))
    assert max(e.data["drift_ms"] for e in events(r, keys, "cron.fired")) >= 1000  # the missed ones, fired late
    assert not events(r, keys, "cron.skipped")
