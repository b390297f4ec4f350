"""Messages: one row per message, updated in place as its events arrive."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from iii_console.core.text import first_line
from iii_console.tui import fmt
from iii_console.tui.lines import LineTable, bounded_put
from iii_console.tui.messages import OpenTrace
from iii_console.tui.model import MessageRow
from iii_console.tui.widgets import Pane, View, n, retitle, t

#: Rows shown (newest first); older messages are still in the model, reachable with the filter.
ROWS = 200
#: New rows at most this often (an age ticking over is shown whenever it does): a row that
#: moves keeps its rendered strip, but a new one at the top shifts every row's zebra stripe.
REBUILD_EVERY_S = 1.0
COLUMNS = (
    ("Message", 10),
    ("Topic", 24),
    ("Step", 18),
    ("Status", 10),
    ("Att", 4),
    ("Priority", 8),
    ("Age", 7),
    ("Duration", 10),
    ("Trace", 9),
    ("Last error", None),
)


class MessagesPane(Pane):
    DEFAULT_CSS = """
    MessagesPane LineTable { height: 1fr; }
    MessagesPane #messages-hint { height: 1; color: $text-muted; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield LineTable(COLUMNS, title="Messages", id="messages-table")
        yield Static("enter: open trace · / filter (status:failed, topic:…, step:…) · newest first", id="messages-hint")

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._traces: dict[str, str] = {}
        self._shown: tuple[int, int, object] = (-1, -1, None)
        self._rebuilt_at = 0.0
        #: Each shown row's cells by message id, with the change (``rev``) and age they show:
        #: a row is built again only when one of them moved (building all 200 rows through
        #: Rich's Text was ~10 ms a redraw).
        self._built: dict[str, tuple[int, str, tuple[Text, ...]]] = {}

    def show(self, view: View) -> None:
        key = (view.model.seq, view.now_ms // 1000, view.filter)
        if key == self._shown:
            return  # nothing new, and ages only change by the second
        table = self.query_one(LineTable)
        rows = view.model.message_rows(view.filter, ROWS)
        same_rows = [r.message_id for r in rows] == table.row_keys
        mono = time.monotonic()
        if not same_rows and view.filter == self._shown[2] and mono - self._rebuilt_at < REBUILD_EVERY_S:
            return  # a rebuild just happened: a later tick shows these
        self._shown = key
        if not same_rows:
            self._rebuilt_at = mono
        self._traces = {r.message_id: r.trace_id for r in rows}
        table.show_rows([(r.message_id, self._row_cells(r, view.now_ms)) for r in rows])
        total = len(view.model.messages)
        title = f"Messages ({len(rows)} of {total})" if view.filter else f"Messages ({total})"
        retitle(table, title=title + (f" · filter: {view.filter.text}" if view.filter else ""))
        counts: dict[str, int] = {}
        for r in view.model.messages.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        sub = " ".join(f"{s} {c}" for s, c in sorted(counts.items()))
        groups = list(view.model.groups.items())[-3:]
        if groups:  # the latest fan-in groups: children settled of those seen enqueued, or the completion's counts
            sub += " · groups: " + ", ".join(
                f"{gid[:8]} " + (f"done {g.done.get('ok')}/{g.done.get('total')} ok" if g.done else f"{g.settled}/{g.total}")
                for gid, g in groups
            )
        retitle(table, subtitle=sub)

    def _row_cells(self, r: MessageRow, now_ms: int) -> tuple[Text, ...]:
        age = fmt.age(r.created_ms, now_ms)
        built = self._built.get(r.message_id)
        if built is not None and built[0] == r.rev and built[1] == age:
            return built[2]
        cells = _cells(r, age)
        self._built.pop(r.message_id, None)  # rebuilt: the newest again, so the last to be dropped
        bounded_put(self._built, r.message_id, (r.rev, age, cells), 2 * ROWS)
        return cells

    def on_line_table_row_selected(self, event: LineTable.RowSelected) -> None:
        event.stop()
        key = event.row_key
        trace = self._traces.get(key or "")
        if key and trace:
            self.post_message(OpenTrace(trace, key))


def _duration(r: MessageRow) -> Text:
    """How long its run took; while it runs, the progress it last reported (``ctx.progress``)."""
    if r.status == "running" and r.progress is not None:
        return t(fmt.progress_bar(*r.progress, width=5), "cyan", justify="right")
    return t(fmt.duration(r.duration_ms), justify="right")


def _cells(r: MessageRow, age: str) -> tuple[Text, ...]:
    return (
        t(r.message_id[:8], "bold"),
        t(r.topic),
        t(r.step),
        fmt.status(r.status),
        n(r.attempts),
        t(r.priority, fmt.PRIORITY_STYLE.get(r.priority, "")),
        t(age, justify="right"),
        _duration(r),
        t(r.trace_id[:8], "bright_black"),
        t(first_line(r.error or ""), "red" if r.status in ("failed", "retrying", "dead") else "bright_black"),
    )
