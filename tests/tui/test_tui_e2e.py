"""The console on a real running project: server, worker process and scheduler in the same
event loop as the app (as ``iii-console`` runs them), the seed steps, a real Redis."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import Input

from iii_console.core.config import Config, load_config
from iii_console.runtime.supervisor import Supervisor
from iii_console.tui.lines import LineLog, LineTable
from iii_console.tui.screens import SendScreen, TraceScreen
from iii_console.tui.widgets import Table

from ..helpers import ROOT, console, log_text, plain, started, table_rows, until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONFIG = """
redis:
  url: {url}
server:
  host: 127.0.0.1
  port: 0
queues:
  message.sent:
    max_retries: 1
    retry_delay: 100
    backoff: fixed
    concurrency: 4
    dead_letter_queue: message.sent.dlq
workers:
  shutdown_timeout: 5
"""


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> Config:
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    (tmp_path / "iii-config.yaml").write_text(CONFIG.format(url=redis_url))
    return load_config(tmp_path / "iii-config.yaml", env={})


@pytest.fixture
async def runtime(project: Config) -> AsyncIterator[Supervisor]:
    sup = Supervisor(project)
    await sup.start()
    try:
        yield sup
    finally:
        await sup.stop()


async def test_a_message_sent_with_s_is_processed_and_its_trace_shows_every_hop(runtime, redis_url):
    """Given the seed project running, when a message is sent from the console's form, then Live and Messages show it reach processed, and its trace runs from HTTP to the notification."""
    app = console(redis_url=redis_url, server_url=f"http://127.0.0.1:{runtime.port}")
    async with app.run_test(size=(160, 45)) as pilot:
        await started(pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form")
        app.screen.query_one("#send-text", Input).insert_text_at_cursor("hello from the console")
        await pilot.press("enter")
        await until(pilot, lambda: "1 message sent" in "\n".join(n.message for n in app._notifications), "the send result")

        events = app.query_one("#events", LineLog)
        await until(pilot, lambda: "notification.sent" in log_text(events), "the whole flow in the Live log")
        assert "http.received" in log_text(events) and "message.processed" in log_text(events)

        await pilot.press("2")

        def processed():
            return [k for k, r in table_rows(app, "#messages-table").items() if r[1] == "message.sent" and r[3] == "processed"]

        await until(pilot, processed, "the message row at processed")
        table = app.query_one("#messages-table", LineTable)
        table.move_cursor(row=table.row_keys.index(processed()[0]))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.searched, "the trace")
        timeline = app.screen.query_one("#timeline", Table)
        kinds = [plain(timeline.get_row(r.key)[2]) for r in timeline.ordered_rows]
        for hop in (
            "http.received",
            "message.enqueued",
            "message.started",
            "message.processed",
            "state.changed",
            "notification.sent",
        ):
            assert hop in kinds, hop
        assert "hello from the console" in plain(app.screen.query_one("#trace-summary").content)


async def test_a_failing_message_retries_then_lands_in_dead_letters_with_its_traceback(runtime, redis_url):
    """Given the seed project running, when a JSON message that always fails is sent, then its row ends dead and the Dead letters tab shows its traceback."""
    app = console(redis_url=redis_url, server_url=f"http://127.0.0.1:{runtime.port}")
    async with app.run_test(size=(160, 45)) as pilot:
        await started(pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form")
        app.screen.query_one("#mode-json").value = True
        text = app.screen.query_one("#send-text", Input)
        await until(pilot, lambda: text.placeholder.startswith("{") and text.has_focus, "the form in JSON mode")
        text.insert_text_at_cursor('{"text": "boom", "fail_times": 9}')
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SendScreen), "the form sent")

        await pilot.press("2")
        dead = lambda: [r for r in table_rows(app, "#messages-table").values() if r[3] == "dead"]  # noqa: E731
        await until(pilot, dead, "the message row at dead")
        assert dead()[0][4] == "2"  # max_retries 1: two attempts
        await pilot.press("4")
        await until(pilot, lambda: table_rows(app, "#dlq-table"), "the dead-letter entry")
        detail = app.query_one("#dlq-detail")
        await until(pilot, lambda: "Traceback" in plain(detail.content), "its traceback")
        assert "simulated failure on attempt 2" in plain(detail.content)
