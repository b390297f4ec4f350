"""The timeline of one trace: every event of a request or message, in the order they happened."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from iii_console.core.events import Event, order_key
from iii_console.core.text import first_line
from iii_console.format import TYPE_STYLE, detail
from iii_console.tui import fmt
from iii_console.tui.model import STATUS, MessageRow
from iii_console.tui.widgets import Table, cursor_key, lines, retitle, t


class TraceScreen(Screen[None]):
    """Every event of one trace: a timeline, and the highlighted event in full."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    DEFAULT_CSS = """
    TraceScreen #trace-summary { height: auto; max-height: 12; padding: 0 1; border: round $accent; }
    TraceScreen #timeline { height: 1fr; }
    TraceScreen #event-box { height: 1fr; border: round $panel-lighten-2; }
    TraceScreen #event-detail { padding: 0 1; }
    """

    def __init__(self, trace_id: str, message_id: str | None = None, events: list[Event] | None = None):
        super().__init__()
        self.trace_id = trace_id
        self.message_id = message_id
        self._events: dict[str, Event] = {}
        self._ordered: list[Event] = []
        self.searched = False
        self._merge(events)

    def compose(self) -> ComposeResult:
        yield Static(Text(f"trace {self.trace_id}", style="bold"), id="trace-summary")
        yield Table(
            (("+", 9), ("Time", 12), ("Event", 21), ("Step", 18), ("Att", 3), ("Worker", 22), ("Detail", None)),
            title="Timeline",
            id="timeline",
        )
        with VerticalScroll(id="event-box") as box:
            retitle(box, title="Event")
            yield Static("", id="event-detail")
        yield Footer()

    def on_mount(self) -> None:
        self._redraw()
        self.query_one("#timeline", DataTable).focus()

    def add_events(self, events: list[Event] | None, *, searched: bool = False) -> None:
        """Merge events of this trace (from the live index or a search of the stream)."""
        self.searched = self.searched or searched
        if (self._merge(events) or searched) and self.is_mounted:
            self._redraw()

    def _merge(self, events: list[Event] | None) -> bool:
        changed = False
        for ev in events or ():
            key = ev.id or f"{ev.ts}:{ev.type}:{ev.message_id}:{ev.attempt}"
            if key not in self._events:
                self._events[key] = ev
                changed = True
        if changed:
            self._ordered = sorted(self._events.values(), key=order_key)
        return changed

    def _redraw(self) -> None:
        evs = self._ordered
        table = self.query_one("#timeline", Table)
        t0 = evs[0].ts if evs else 0
        table.show_rows(
            [
                (
                    str(i),
                    (
                        t(f"+{(e.ts - t0) / 1000:.3f}s", "bright_black", justify="right"),
                        t(fmt.clock(e.ts)),
                        t(e.type, TYPE_STYLE.get(e.type, "")),
                        t(e.step, "bold"),
                        t(e.attempt, justify="right"),
                        t(e.worker, "bright_black"),
                        t(detail(e), "red" if e.error else ""),
                    ),
                )
                for i, e in enumerate(evs)
            ]
        )
        retitle(table, title=f"Timeline ({len(evs)} events)")
        retitle(table, subtitle="" if self.searched else "searching the stream…")
        self.query_one("#trace-summary", Static).update(self._summary())
        self._detail(cursor_key(table))

    def _summary(self) -> Text:
        evs = self._ordered
        if not evs:
            msg = "no events found for this trace on the stream" if self.searched else "loading…"
            return lines([Text(f"trace {self.trace_id}", style="bold"), Text(msg, style="bright_black")])
        rows: dict[str, MessageRow] = {}
        for i, e in enumerate(evs):
            if e.type in STATUS and e.message_id:
                rows.setdefault(e.message_id, MessageRow(e.message_id)).apply(e, i)
        span = evs[-1].ts - evs[0].ts
        out = [
            Text.assemble(
                ("trace ", "bright_black"),
                (self.trace_id, "bold"),
                ("  ·  ", "bright_black"),
                f"{len(evs)} events over {fmt.duration(float(span))}",
                ("  ·  started ", "bright_black"),
                fmt.clock(evs[0].ts),
            )
        ]
        for r in rows.values():
            mark = "▶ " if r.message_id == self.message_id else "  "
            out.append(
                Text.assemble(
                    mark,
                    ("message ", "bright_black"),
                    (r.message_id[:8], "bold"),
                    "  ",
                    (fmt.plain(r.topic or "-"), "blue"),
                    " → ",
                    (fmt.plain(r.step or "-"), "bold"),
                    "  ",
                    fmt.status(r.status),
                    f"  {r.attempts} attempt{'s' if r.attempts != 1 else ''}",
                    f"  {r.priority} priority",
                    (fmt.plain(f"  {first_line(r.error)}") if r.error and r.status != "processed" else "", "red"),
                )
            )
        payload = _payload(evs)
        if payload is not None:
            out.append(Text.assemble(("payload ", "bright_black"), fmt.one_line(payload, 140)))
        errors = [e for e in evs if e.error]
        if errors:
            out.append(
                Text.assemble(
                    ("last error ", "bright_black"),
                    (fmt.plain(first_line(errors[-1].error)), "bold red"),
                    ("  (select a failed event below for its traceback)", "bright_black"),
                )
            )
        return lines(out)

    @on(DataTable.RowHighlighted, "#timeline")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(event.row_key.value)

    def _detail(self, key: str | None) -> None:
        try:
            ev = self._ordered[int(key)] if key is not None else None
        except (ValueError, IndexError):
            ev = None
        box = self.query_one("#event-box", VerticalScroll)
        if ev is None:
            self.query_one("#event-detail", Static).update("")
            return
        retitle(box, title=f"Event {ev.id or ''}")
        fields = [
            f for f in ("message_id", "step", "topic", "queue", "attempt", "worker", "duration_ms") if getattr(ev, f) is not None
        ]
        parts: list[Text] = [
            Text.assemble((fmt.plain(ev.type), TYPE_STYLE.get(ev.type, "") + " bold"), "  ", (fmt.utc_iso(ev.ts), "bright_black"))
        ]
        parts.append(
            Text.assemble(*[x for f in fields for x in ((f"{f} ", "bright_black"), (fmt.plain(f"{getattr(ev, f)}  "), ""))])
        )
        if ev.error:
            parts.append(Text.assemble(("error ", "bright_black"), (fmt.plain(ev.error, keep_lines=True), "bold red")))
        data = ev.data if isinstance(ev.data, dict) else ({"value": ev.data} if ev.data is not None else {})
        tb = data.get("traceback") if isinstance(data.get("traceback"), str) else None
        rest = {k: v for k, v in data.items() if k != "traceback"}
        if rest:
            parts.append(Text("data", style="bright_black"))
            parts.append(Text(fmt.pretty_json(rest)))
        if tb:
            parts.append(Text("traceback", style="bright_black"))
            parts.append(Text(fmt.plain(tb.rstrip(), keep_lines=True), style="red"))
        self.query_one("#event-detail", Static).update(lines(parts))


def _payload(evs: list[Event]) -> Any:
    for e in evs:
        d = e.data if isinstance(e.data, dict) else {}
        if e.type == "http.received" and "body" in d:
            return d["body"]
        if e.type == "message.enqueued" and "payload" in d:
            return d["payload"]
    return None
