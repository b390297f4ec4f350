"""The console app driven with Pilot against a real Redis and real events.

Every app here comes from ``create_app``, the factory the CLI calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
import redis
from textual import events
from textual.command import CommandInput, CommandList, CommandPalette
from textual.widgets import Input, RichLog, Static, TabbedContent

from iii_console.core.events import Event
from iii_console.core.redis_server import RedisServer
from iii_console.core.state import StateStore
from iii_console.tui import ConsoleApp
from iii_console.tui.lines import LineLog
from iii_console.tui.model import TILES
from iii_console.tui.screens import HelpScreen, SendScreen, TraceScreen
from iii_console.tui.widgets import Table

from ..helpers import SIZE, T0_MS, console, lifecycle, log_text, notes, plain, settle, started, table_rows, topbar, until, xadd

pytestmark = pytest.mark.anyio


async def test_live_shows_past_events_then_follows_new_ones(redis_url, emit):
    """Given three messages already on the stream, when the console opens and a fourth arrives, then Live counts and logs all of them."""
    emit([e for n in range(3) for e in lifecycle(n, T0_MS + n * 100)])
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        events = app.query_one("#events", LineLog)
        await until(pilot, lambda: "message.processed" in log_text(events), "history in the log")
        assert app.model.tiles["processed"].total == 3
        emit(lifecycle(7, T0_MS + 5000, fails=1))
        await until(pilot, lambda: "simulated failure on attempt 1" in log_text(events), "the new failure in the log")
        await settle(pilot)
        tile = plain(app.query_one("#tile-processed .tile-value", Static).content)
        assert tile.startswith("4")
        assert "connected" in topbar(app) and "events" in topbar(app)


async def test_message_rows_update_in_place_and_enter_opens_the_whole_trace(redis_url, emit):
    """Given a message that is running, when it fails once and then succeeds, then its one row ends processed after 2 attempts and its trace shows every hop with the traceback."""
    evs = lifecycle(1, T0_MS, fails=1)
    first_started = next(i for i, e in enumerate(evs) if e.type == "message.started")
    emit(evs[: first_started + 1])
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("2")
        mid = evs[2].message_id
        await until(pilot, lambda: table_rows(app, "#messages-table").get(mid, [""] * 4)[3] == "running", "a running row")
        emit(evs[first_started + 1 :])
        await until(pilot, lambda: table_rows(app, "#messages-table")[mid][3] == "processed", "the row to reach processed")
        rows = table_rows(app, "#messages-table")
        assert list(rows) == [mid]  # the same row, updated in place
        assert rows[mid][4] == "2" and "attempt 1" in rows[mid][9]

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TraceScreen), "the trace screen")
        timeline = app.screen.query_one("#timeline", Table)
        await until(pilot, lambda: timeline.row_count == len(evs), "every event of the trace")
        kinds = [plain(timeline.get_row(r.key)[2]) for r in timeline.ordered_rows]
        assert kinds[0] == "http.received" and kinds[-1] == "notification.sent"
        assert {"message.enqueued", "message.failed", "message.retrying", "message.processed"} <= set(kinds)
        timeline.move_cursor(row=kinds.index("message.failed"))
        await pilot.pause()
        detail = plain(app.screen.query_one("#event-detail", Static).content)
        assert "Traceback (most recent call last)" in detail and "simulated failure on attempt 1" in detail
        summary = plain(app.screen.query_one("#trace-summary", Static).content)
        assert "processed" in summary and '"text":"hello"' in summary.replace(" ", "")

        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, TraceScreen), "back to the tabs")


async def test_filter_narrows_the_log_and_the_messages_and_esc_clears_it(redis_url, emit):
    """Given a processed and a dead message, when filtering, then only matching events and rows show until esc."""
    emit(lifecycle(1, T0_MS) + lifecycle(2, T0_MS + 10, fails=3, dead=True))
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        events = app.query_one("#events", LineLog)
        await until(pilot, lambda: "message.dead_lettered" in log_text(events), "both messages in the log")
        box = app.query_one("#filter", Input)
        # Pilot's press returns once the app looks idle, which on a loaded machine can be before
        # the key has reached its binding: each step waits for what the key does.
        await pilot.press("slash")
        await until(pilot, lambda: box.has_focus, "the filter box to take the keys")
        await pilot.press(*"type:")
        await until(pilot, lambda: box.value == "type:", "the typed keys in the filter box")
        box.insert_text_at_cursor("message.dead")  # the rest of the typing, in one go
        await pilot.press("enter")
        await until(pilot, lambda: not box.display, "the filter box to close")
        await settle(pilot)
        lines = [ln for ln in log_text(events).splitlines() if ln.strip()]
        assert lines and all("message.dead_lettered" in ln for ln in lines)
        assert "filter: type:message.dead" in topbar(app)

        await pilot.press("slash")
        await until(pilot, lambda: box.has_focus and box.value == "type:message.dead", "the filter box, reopened")
        await pilot.press("ctrl+u")
        await until(pilot, lambda: not box.value, "the filter box emptied")
        box.insert_text_at_cursor("status:dead")
        await pilot.press("enter", "2")
        await until(pilot, lambda: len(table_rows(app, "#messages-table")) == 1, "only the dead row")
        assert [r[3] for r in table_rows(app, "#messages-table").values()] == ["dead"]

        await pilot.press("escape")
        await until(pilot, lambda: len(table_rows(app, "#messages-table")) == 2, "both rows back")
        assert not app.filter and "filter:" not in topbar(app)


async def test_pause_freezes_the_view_while_reading_continues_then_resumes_where_it_was(redis_url, emit):
    """Given a paused console, when events arrive, then they are read (and counted in the bar) but not drawn until p again."""
    emit(lifecycle(1, T0_MS))
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        events = app.query_one("#events", LineLog)
        await until(pilot, lambda: "notification.sent" in log_text(events), "the first message")
        await pilot.press("p")
        before = log_text(events)
        emit(lifecycle(2, T0_MS + 1000, fails=1))
        await until(pilot, lambda: app.model.tiles["failed"].total == 1, "the paused console to keep reading")
        await settle(pilot)
        assert log_text(events) == before
        assert "PAUSED" in topbar(app) and f"{len(lifecycle(2, 0, fails=1))} new" in topbar(app)
        await pilot.press("p")
        await until(pilot, lambda: "simulated failure on attempt 1" in log_text(events), "the resumed log")
        assert log_text(events).startswith(before.rstrip("\n"))  # continues after what was shown: no gap, no repeat


async def test_losing_redis_shows_disconnected_and_resumes_without_a_gap(tmp_path, keys):
    """Given a console on a Redis that stops and comes back, when events are written before and after, then the bar says disconnected, then every event shows once, in order."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    client = redis.Redis(port=server.port)
    try:
        before, after = lifecycle(1, T0_MS), lifecycle(2, T0_MS + 10_000, fails=1)
        xadd(client, keys, before)
        app = console(redis_url=server.url)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.model.seq == len(before), "the first message")
            server.stop()
            await until(pilot, lambda: "disconnected" in topbar(app), "the bar to say disconnected")
            await until(pilot, lambda: "Lost Redis" in notes(app), "a notice of the outage")
            server = RedisServer(tmp_path / "redis", port=server.port, appendonly=True).start()
            client = redis.Redis(port=server.port)
            xadd(client, keys, after)
            await until(pilot, lambda: app.model.seq == len(before) + len(after), "the events written after the outage")
            await until(pilot, lambda: "connected" in topbar(app) and "disconnected" not in topbar(app), "connected again")
            ids = [e.event.id for e in app.model.log]
            assert ids == sorted(ids) and len(set(ids)) == len(before) + len(after)
            await until(pilot, lambda: "Redis is back" in notes(app), "a notice of the recovery")
    finally:
        client.close()
        server.stop()


async def test_state_tab_shows_groups_keys_and_values_as_they_change(redis_url, r, keys):
    """Given the State tab open, when a step writes state, then the new key and its JSON value appear without a keypress."""
    store = StateStore(r, keys)
    store.set("orders", "o-1", {"status": "new", "total": 12})
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("5")
        await until(pilot, lambda: "o-1" in table_rows(app, "#state-keys"), "the first key")
        store.set("orders", "o-2", {"status": "paid", "total": 30})
        await until(pilot, lambda: "o-2" in table_rows(app, "#state-keys"), "the key written after opening")
        assert table_rows(app, "#state-keys")["o-2"][2] == "status=paid"
        keys_table = app.query_one("#state-keys", Table)
        keys_table.move_cursor(row=list(table_rows(app, "#state-keys")).index("o-2"))
        await pilot.pause()
        value = app.query_one("#state-value", Static).content
        assert '"total": 30' in plain(getattr(value, "code", value))


async def test_step_errors_are_shown_in_the_bar_the_problems_panel_and_a_toast(redis_url, emit):
    """Given a step that fails to load, when the console reads the error, then it is visible without opening a log file."""
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        emit(
            [
                Event(
                    "step.error",
                    int(time.time() * 1000),
                    step="Broken",
                    error="steps/broken_step.py:3: triggers: field required",
                    data={"file": "steps/broken_step.py", "line": 3, "field": "triggers", "message": "field required"},
                )
            ]
        )
        problems = app.query_one("#problems", RichLog)
        await until(pilot, lambda: "steps/broken_step.py:3" in log_text(problems), "the error in Problems")
        assert "1 step error" in topbar(app)
        await until(pilot, lambda: "field required" in notes(app), "a toast with the error")


@pytest.mark.parametrize("size", [SIZE, (100, 30)], ids=["wide", "narrow"])
async def test_the_problems_panel_fits_its_lines_to_its_width_beside_or_under_the_log(redis_url, emit, size):
    """Given a step error with a long message, when the console shows it, then every line of the Problems panel fits
    the panel (none is cut at its edge: RichLog's default wrapped at 78 columns, wider than the panel); a terminal
    under 140 columns shows the panel under the event log, full width, while it has something to say."""
    app = console(redis_url=redis_url)
    async with app.run_test(size=size) as pilot:
        await started(pilot)
        problems = app.query_one("#problems", RichLog)
        long = "steps/place_order_step.py:19, step 'PlaceOrder': syntax error: expected ':' after the function's arguments"
        emit([Event("step.error", int(time.time() * 1000), step="PlaceOrder", error=long, data={"file": "steps/x.py"})])
        await until(pilot, lambda: "PlaceOrder" in log_text(problems), "the error in Problems")
        await settle(pilot)
        width = problems.scrollable_content_region.width
        assert width > 20 and all(line.cell_length <= width for line in problems.lines), (width, log_text(problems))
        assert "expected ':' after the function's arguments" in " ".join(log_text(problems).split())
        events_box = app.query_one("#events").region
        if size[0] < 140:
            assert problems.display and problems.region.y >= events_box.bottom and problems.region.width == events_box.width
        else:
            assert problems.region.x >= events_box.right


async def test_help_and_the_command_palette(redis_url):
    """Given the console, when ? is pressed then esc, and a palette command is chosen, then help opens and closes and the command runs."""
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen), "help closed")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the command palette")
        app.screen.query_one(CommandInput).insert_text_at_cursor("go to dead letters")
        await until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, "matching commands")
        await pilot.press("enter")
        await until(pilot, lambda: app._tabs.active == "dlq", "the Dead letters tab")


async def test_send_needs_a_server_and_is_off_when_read_only(redis_url):
    """Given no server URL, or a read-only console, when s is pressed, then no form opens and a notice says why."""
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("s")
        assert not isinstance(app.screen, SendScreen)
        await until(pilot, lambda: "needs a running server" in notes(app), "why sending is off")
    app = console(redis_url=redis_url, server_url="http://127.0.0.1:9", read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("s")
        assert not isinstance(app.screen, SendScreen)
        await until(pilot, lambda: "read-only" in notes(app), "why sending is off")
        assert app.read_only


@pytest.fixture
def http_sink() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server that records the JSON bodies POSTed to /messages."""
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            got.append({"path": self.path, "body": body})
            out = json.dumps({"id": f"m{len(got)}", "trace_id": f"{len(got):08d}ffff", "status": "queued"}).encode()
            self.send_response(202)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", got
    server.shutdown()
    server.server_close()


async def test_send_form_posts_text_with_priority_count_times_and_raw_json(redis_url, http_sink):
    """Given a server, when the form is sent in text mode (high, 3 times) and then in JSON mode, then exactly those bodies are POSTed."""
    url, got = http_sink
    app = console(redis_url=redis_url, server_url=url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form")
        text = app.screen.query_one("#send-text", Input)
        await until(pilot, lambda: text.has_focus, "the text box to take the keys")
        await pilot.press(*"hi")
        await until(pilot, lambda: text.value == "hi", "the typed keys in the text box")
        text.insert_text_at_cursor(" there")
        app.screen.query_one("#send-priority").value = "high"
        count = app.screen.query_one("#send-count", Input)
        count.value = "3"
        await pilot.press("enter")
        await until(pilot, lambda: len(got) == 3, "three POSTs")
        assert all(g == {"path": "/messages", "body": {"text": "hi there", "priority": "high"}} for g in got)
        await until(pilot, lambda: "3 messages sent" in notes(app), "the result as a notification")

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form again")
        await json_mode(pilot, app.screen)
        app.screen.query_one("#send-text", Input).insert_text_at_cursor('{"text": "boom", "fail_times": 2}')
        await pilot.press("enter")
        await until(pilot, lambda: len(got) == 4, "the JSON POST")
        assert got[-1]["body"] == {"text": "boom", "fail_times": 2}


async def json_mode(pilot: Any, form: SendScreen) -> Input:
    """Switch the send form to a raw JSON body; the text box, once it has the keys again."""
    form.query_one("#mode-json").value = True
    text = form.query_one("#send-text", Input)
    await until(pilot, lambda: text.placeholder.startswith("{") and text.has_focus, "the form in JSON mode")
    return text


async def test_send_form_refuses_invalid_json_and_reports_an_unreachable_server(redis_url):
    """Given a form with bad JSON, when submitted, then it stays open with the reason; given no server listening, then a toast says so."""
    app = console(redis_url=redis_url, server_url="http://127.0.0.1:9")
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form")
        form = app.screen
        text = await json_mode(pilot, form)
        text.insert_text_at_cursor("[1, 2")
        await pilot.press("enter")
        error = form.query_one("#send-error", Static)
        await until(pilot, lambda: "not valid JSON" in plain(error.content), "the reason the JSON is refused")
        assert app.screen is form and text.has_focus
        await pilot.press("ctrl+u")
        await until(pilot, lambda: not text.value, "the text box emptied")
        text.insert_text_at_cursor('{"text": "x"}')
        await pilot.press("enter")
        await until(pilot, lambda: "no server at http://127.0.0.1:9" in notes(app), "the connection error")


def send_key(app: ConsoleApp, key: str) -> None:
    event = events.Key(key, key if len(key) == 1 else None)
    event.set_sender(app)
    app._driver.send_message(event)


PRODUCER = """
import sys, time, json, redis

key, url, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
entries = [json.loads(line) for line in sys.stdin]
client = redis.Redis.from_url(url)
start = time.monotonic()
for i in range(0, len(entries), 250):
    pipe = client.pipeline(transaction=False)
    for fields in entries[i:i + 250]:
        pipe.xadd(key, fields)
    pipe.execute()
    time.sleep(max(0.0, start + (i + 250) / rate - time.monotonic()))
"""


async def test_5000_events_a_second_keep_keys_responsive_and_buffers_bounded(redis_url, keys):
    """Given 8,400 events arriving from another process at about 5,000 a second, when keys are pressed meanwhile, then each is handled, every event is counted, and every buffer stays capped.

    How fast (events/s, key → repaint, CPU, RSS) is measured by bench scenario 6, not here:
    timings on a shared 2-core machine would make this test flaky.
    """
    encoded = [e.encode() for n in range(1200) for e in lifecycle(n, T0_MS + n)]
    handled_at: list[int] = []  # how many events had been read when each tab switch was handled

    def hook(message: Any) -> None:
        if isinstance(message, TabbedContent.TabActivated):
            handled_at.append(app.model.seq)

    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        await started(pilot)
        producer = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, keys.events, redis_url, "5000"], stdin=subprocess.PIPE, text=True
        )
        assert producer.stdin is not None
        producer.stdin.write("".join(json.dumps(f) + "\n" for f in encoded))
        producer.stdin.close()
        try:
            await until(pilot, lambda: app.model.seq > 500, "the stream to flow")
            handled_at.clear()
            for key, tab in (("2", "messages"), ("3", "queues"), ("1", "live")):
                send_key(app, key)  # as the terminal driver does, without Pilot's wait for an idle CPU
                await until(pilot, lambda: app._tabs.active == tab, f"the {tab} tab", timeout=60)
            assert len(handled_at) >= 3  # each tab switch was handled (the message is seen once per node it bubbles through)
            await until(pilot, lambda: app.model.seq == len(encoded), "every event read")
        finally:
            assert producer.wait(30) == 0
        m = app.model
        assert len(m.log) <= m.log.maxlen and len(m.messages) <= m.max_messages and len(m.traces) <= m.traces.max_traces
        assert app.inbox_peak <= app.tail.batch  # the backlog waits in Redis, not in the console
        assert all(m.tiles[t.name].total == 1200 for t in TILES if t.name not in ("failed", "retrying", "dead-lettered"))
        await pilot.press("2")
        await until(pilot, lambda: len(table_rows(app, "#messages-table")) == 200, "the newest 200 rows")


async def test_quit_stops_the_readers(redis_url):
    """Given a running console, when q is pressed, then the app exits and its reader threads stop."""
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await until(pilot, lambda: app.snap.polls > 0, "the poller running")
        assert app.readers == {"stream", "poll"}
        await pilot.press("q")
    assert app.return_code == 0
    deadline = time.monotonic() + 5
    while app.readers and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert app.readers == set()


@pytest.mark.parametrize("local", [0, 2])
async def test_with_no_worker_registered_the_workers_tab_says_whether_its_own_are_starting(redis_url, local):
    """Given no worker registered, when the Workers tab shows, then a console that started workers of its own says
    they are starting (they import the steps first); one that only attaches says how to start some."""
    app = console(redis_url=redis_url)
    app.local_workers = local
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("7")
        table = app.query_one("#workers-table", Table)
        await until(pilot, lambda: "worker" in str(table.border_subtitle), "the workers table's subtitle")
        said = str(table.border_subtitle)
    if local:
        assert said == "no workers registered yet: this console's 2 worker process(es) are starting (importing the steps)"
    else:
        assert said == "no workers registered: start `iii-console` or `iii-console --no-ui --role worker`"


async def test_hostile_text_in_events_reaches_the_console_escaped_and_a_startup_notice_is_shown(redis_url, emit):
    """Given a console with a startup notice, when events arrive whose step, error and data hold ESC sequences, newlines and
    markup, then the log and the toasts show them escaped (no control character, markup as text) and the notice is a toast."""
    hostile = "x\nFAKE 09:00:00 message.processed\x1b[31mRED\x1b]0;pwned\x07 [bold]B[/]"
    app = console(redis_url=redis_url)
    app.notice = "Redis 6.2.14 has known security issues fixed in 6.2.20"
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        emit(
            [
                Event(type="step.error", ts=T0_MS, trace_id="t1", step="Bad\x1b[2J", error=hostile),
                Event(
                    type="state.changed",
                    ts=T0_MS + 1,
                    trace_id="t2",
                    step="S",
                    data={"group": hostile, "key": "k\x1b[31m", "op": "set"},
                ),
            ]
        )
        events = app.query_one("#events", LineLog)
        await until(pilot, lambda: "state.changed" in log_text(events) and "FAKE" in notes(app), "both events")
        shown = log_text(events) + notes(app)
        assert "\x1b" not in shown and "\x07" not in shown and "\nFAKE" not in shown
        assert "x\\nFAKE" in shown and "[bold]B[/]" in notes(app)
        assert "6.2.20" in notes(app)


async def test_table_draws_cells_like_datatable_and_renders_each_content_once():
    """`Table` reuses a rendered cell across rebuilds (Textual re-rendered every visible cell on any
    change), and draws exactly what a plain `DataTable` draws with the same rows."""
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    cols = (("Id", 6), ("Status", 10), ("Note", 12))
    rows = [
        (f"m{i}", (Text(f"m{i}", style="bold"), Text("processed", style="green"), Text(f"note {i}", justify="right")))
        for i in range(8)
    ]

    class Both(App[None]):
        def compose(self) -> ComposeResult:
            yield Table(cols, id="ours")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="plain")

    def drawn(table: DataTable[Any], y: int) -> list[tuple[str, str]]:
        """Each character with its style (segment boundaries aside)."""
        return [(ch, str(seg.style)) for seg in table.render_line(y) for ch in seg.text]

    app = Both()
    async with app.run_test(size=(80, 30)) as pilot:
        ours, theirs = app.query_one("#ours", Table), app.query_one("#plain", DataTable)
        for label, width in cols:
            theirs.add_column(label, width=width, key=label.lower())
        ours.show_rows(rows)
        for key, cells in rows:
            theirs.add_row(*cells, key=key)
        app.set_focus(None)  # neither has the focus (it styles the cursor row)
        await pilot.pause()
        for y in range(1, 9):
            assert drawn(ours, y) == drawn(theirs, y)
        cached = len(ours._cells)
        assert cached > 0
        ours.clear()  # a rebuild with the same content: nothing rendered again
        ours.show_rows(rows)
        await pilot.pause()
        for y in range(1, 9):
            ours.render_line(y)
        assert len(ours._cells) == cached
        changed = [(k, (c[0], Text("failed", style="red"), c[2])) if k == "m0" else (k, c) for k, c in rows]
        ours.show_rows(changed)
        await pilot.pause()
        assert "failed" in ours.render_line(1).text
        assert len(ours._cells) > cached


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_a_trim_hands_the_heaps_freed_pages_back():
    """Given 80 MB of C-heap blocks of which all but every 64th are freed (the heap's top stays in use, so free() alone
    returns nothing), when the console's trim runs, then the resident size drops by most of what was freed."""
    import iii_console.tui.app as app_mod

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    blocks = [bytes(4000) + bytes([i % 256]) for i in range(20_000)]  # over pymalloc's 512 B: glibc's heap
    kept = blocks[::64]
    del blocks
    before = rss_mb()
    app_mod._trim_heap()
    after = rss_mb()
    del kept  # held until measured: the freed blocks between them are what the trim returns
    assert before - after > 40, (before, after)


async def test_the_console_trims_its_heap_while_it_runs(redis_url, monkeypatch):
    """Given a console whose trim interval is short, when it runs a moment, then it has trimmed more than once."""
    import iii_console.tui.app as app_mod

    calls: list[float] = []
    trim = app_mod._trim_heap
    monkeypatch.setattr(app_mod, "TRIM_S", 0.05)
    monkeypatch.setattr(app_mod, "_trim_heap", lambda: (calls.append(time.monotonic()), trim()))
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(calls) >= 3, "three trims")
