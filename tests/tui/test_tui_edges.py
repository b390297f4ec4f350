"""Rough edges of the console a new user meets first, driven with Pilot against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from textual import events
from textual.widgets import Input, RichLog, Static

from iii_console.core.events import Event
from iii_console.tui import ConsoleApp
from iii_console.tui.lines import LineLog, LineTable
from iii_console.tui.screens import TraceScreen
from iii_console.tui.widgets import Table

from ..helpers import SIZE, T0_MS, console, lifecycle, log_text, notes, plain, started, topbar, until

pytestmark = pytest.mark.anyio

VALIDATION_ERROR = (
    "ValidationError: 2 validation errors for Order\nquantity\n"
    "  Input should be greater than 0 [type=greater_than, input_value=-1]\n"
    "sku\n  Field required [type=missing, input_value={}, input_type=dict]"
)


async def test_a_multi_line_error_is_one_line_in_the_log_and_problems_and_whole_in_the_detail(redis_url, emit):
    """Given a failure whose error spans five lines, when it is read, then the log and Problems show its first line and the trace detail all of it."""
    evs = lifecycle(1, T0_MS)
    started_at = next(i for i, e in enumerate(evs) if e.type == "message.started")
    s = evs[started_at]
    failed = Event(
        "message.failed",
        s.ts + 2,
        s.trace_id,
        s.message_id,
        s.step,
        s.topic,
        attempt=1,
        worker=s.worker,
        duration_ms=1.0,
        error=VALIDATION_ERROR,
        data={"traceback": "Traceback…\n"},
    )
    emit([*evs[: started_at + 1], failed])
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        log, problems = app.query_one("#events", LineLog), app.query_one("#problems", RichLog)
        await until(pilot, lambda: "2 validation errors for Order" in log_text(log), "the failure in the log")
        line = next(x for x in log_text(log).splitlines() if "validation errors" in x)
        assert "(+4 lines)" in line and "quantity" not in log_text(log) and "\\n" not in line
        await until(pilot, lambda: "validation errors" in log_text(problems), "the failure in Problems")
        text = " ".join(log_text(problems).split())
        assert "(+4 lines)" in text and "Field required" not in text

        await pilot.press("2")
        await until(pilot, lambda: app.query_one("#messages-table", LineTable).row_count == 1, "the message row")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TraceScreen), "the trace screen")
        timeline = app.screen.query_one("#timeline", Table)
        await until(pilot, lambda: timeline.row_count == started_at + 2, "the trace's events")
        timeline.move_cursor(row=timeline.row_count - 1)
        await pilot.pause()
        detail = plain(app.screen.query_one("#event-detail", Static).content)
        assert "quantity\n" in detail and "Field required [type=missing" in detail


def burst(app: ConsoleApp, keys: str) -> None:
    """Keys as a paste or a fast typist sends them: all queued before the app handles the first."""
    for key in keys:
        name = {"/": "slash", " ": "space", ":": "colon"}.get(key, key)
        event = events.Key(name, key)
        event.set_sender(app)
        app._driver.send_message(event)  # type: ignore[union-attr]


async def test_keys_typed_in_one_burst_after_slash_go_to_the_filter_not_to_shortcuts(redis_url, emit):
    """Given the Live tab, when `/status:dead` arrives in one burst, then the filter holds the text and no shortcut fired (s opens Send, p pauses, 2 switches tab)."""
    emit(lifecycle(1, T0_MS))
    app = console(redis_url=redis_url, server_url="http://127.0.0.1:9")
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        burst(app, "/status:dead p2q")
        box = app.query_one("#filter", Input)
        await until(pilot, lambda: box.value == "status:dead p2q", "the whole text in the filter", timeout=3)
        assert len(app.screen_stack) == 1 and not app.paused and app._active == "live"
        assert app.is_running


async def test_quit_says_it_is_stopping_and_how_many_are_in_flight_until_the_runtime_stopped(redis_url, emit):
    """Given one message running, when q is pressed on a console that runs the runtime, then a stopping notice names the one in flight and the console exits only once the runtime stopped."""
    evs = lifecycle(1, T0_MS)
    emit(evs[: next(i for i, e in enumerate(evs) if e.type == "message.started") + 1])
    released = asyncio.Event()
    stops: list[str] = []

    async def stop_runtime() -> None:
        stops.append("called")
        await released.wait()
        stops.append("done")

    app = console(redis_url=redis_url)
    app.stop_runtime = stop_runtime
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await until(pilot, lambda: app.model.in_flight == 1, "the running message")
        await pilot.press("q")
        await until(pilot, lambda: "stopping… (draining 1 in flight)" in notes(app), "the stopping notice")
        await pilot.press("q")  # a second q waits for the same stop
        await pilot.pause(0.2)
        assert app.is_running and stops == ["called"]
        released.set()
        await until(pilot, lambda: not app.is_running, "the exit once stopped")
    assert stops == ["called", "done"]


async def test_the_header_says_dead_letters_and_keeps_both_counts_at_80_columns(redis_url, emit):
    """Given a console 80 columns wide, when it is up, then the header fits and still names the workers and the dead letters."""
    emit(lifecycle(1, T0_MS))
    app = console(redis_url=redis_url)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot)
        await until(pilot, lambda: "events" in topbar(app), "the header")
        bar = topbar(app)
        assert "0 workers" in bar and "0 dead letters" in bar and len(bar) <= 80
    wide = console(redis_url=redis_url)
    async with wide.run_test(size=SIZE) as pilot:
        await started(pilot)
        await until(pilot, lambda: "0 dead letters" in topbar(wide), "the wide header")
        assert wide.where in topbar(wide)  # room enough: nothing shortened


async def test_history_read_at_start_is_not_counted_as_too_fast_to_read(redis_url, emit):
    """Given a thousand events already on the stream, when the console opens, then the log says they are history, not "too fast to read"."""
    emit([e for n in range(80) for e in lifecycle(n, T0_MS + n * 10)])
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        log = app.query_one("#events", LineLog)
        await until(pilot, lambda: app.model.seq >= 80 * 7 and "notification.sent" in log_text(log), "the history")
        await pilot.pause(0.3)
        text = log_text(log)
        assert "earlier events read from the stream's history" in text
        assert "too fast to read" not in text


async def test_an_empty_live_view_says_how_to_send_the_first_message_until_one_arrives(redis_url, emit):
    """Given an empty stream, when the console opens, then Live says how to send (s, curl, iii-console send), and the hint goes once events arrive."""
    app = console(redis_url=redis_url, server_url="http://127.0.0.1:4321")
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        log = app.query_one("#events", LineLog)
        await until(pilot, lambda: "No events yet" in log_text(log), "the hint")
        text = log_text(log)
        assert "curl -X POST http://127.0.0.1:4321/messages" in text and "iii-console send hello" in text
        assert any(line.lstrip().startswith("s ") for line in text.splitlines())
        # A worker starting is not a message: the log shows it, and Problems keeps the hint.
        problems = app.query_one("#problems", RichLog)
        emit([Event(type="worker.started", ts=T0_MS, worker="vm:1:worker0", data={"id": "vm:1:worker0"})])
        await until(pilot, lambda: "worker.started" in log_text(log), "the worker's event")
        await until(pilot, lambda: "No messages yet" in log_text(problems), "the hint in Problems")
        emit(lifecycle(1, T0_MS))
        await until(pilot, lambda: "message.processed" in log_text(log), "the first events")
        assert "No events yet" not in log_text(log)
        await until(pilot, lambda: "No messages yet" not in log_text(problems), "the hint gone from Problems")
