"""Screens over the tabs: a trace's timeline, a dead letter in full, the send form,
confirmations, the state editor, the key help."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, RadioButton, RadioSet, Select, Static, TextArea

from iii_console.core.dlq import DeadLetter
from iii_console.core.events import Event
from iii_console.format import TYPE_STYLE, detail
from iii_console.tui import fmt
from iii_console.tui.messages import DeadLettersChosen, OpenTrace
from iii_console.tui.model import STATUS, MessageRow
from iii_console.tui.tabs.queues import dead_letter_text
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
        yield Table((("+", 9), ("Time", 12), ("Event", 21), ("Step", 18), ("Att", 3), ("Worker", 22), ("Detail", None)),
                    title="Timeline", id="timeline")
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
            self._ordered = sorted(self._events.values(), key=lambda e: (e.ts, e.id))
        return changed

    def _redraw(self) -> None:
        evs = self._ordered
        table = self.query_one("#timeline", Table)
        t0 = evs[0].ts if evs else 0
        table.show_rows([(str(i), (
            t(f"+{(e.ts - t0) / 1000:.3f}s", "bright_black", justify="right"),
            t(fmt.clock(e.ts)),
            t(e.type, TYPE_STYLE.get(e.type, "")),
            t(e.step, "bold"),
            t(e.attempt, justify="right"),
            t(e.worker, "bright_black"),
            t(detail(e), "red" if e.error else ""),
        )) for i, e in enumerate(evs)])
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
        out = [Text.assemble(("trace ", "bright_black"), (self.trace_id, "bold"),
                             ("  ·  ", "bright_black"), f"{len(evs)} events over {fmt.duration(float(span))}",
                             ("  ·  started ", "bright_black"), fmt.clock(evs[0].ts))]
        for r in rows.values():
            mark = "▶ " if r.message_id == self.message_id else "  "
            out.append(Text.assemble(mark, ("message ", "bright_black"), (r.message_id[:8], "bold"), "  ",
                                     (fmt.plain(r.topic or "-"), "blue"), " → ", (fmt.plain(r.step or "-"), "bold"), "  ",
                                     fmt.status(r.status), f"  {r.attempts} attempt{'s' if r.attempts != 1 else ''}",
                                     f"  {r.priority} priority",
                                     (fmt.plain(f"  {r.error}") if r.error and r.status != "processed" else "", "red")))
        payload = _payload(evs)
        if payload is not None:
            out.append(Text.assemble(("payload ", "bright_black"), fmt.one_line(payload, 140)))
        errors = [e for e in evs if e.error]
        if errors:
            out.append(Text.assemble(("last error ", "bright_black"), (fmt.plain(errors[-1].error), "bold red"),
                                     ("  (select a failed event below for its traceback)", "bright_black")))
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
        fields = [f for f in ("message_id", "step", "topic", "queue", "attempt", "worker", "duration_ms") if getattr(ev, f) is not None]
        parts: list[Text] = [Text.assemble((fmt.plain(ev.type), TYPE_STYLE.get(ev.type, "") + " bold"), "  ", (fmt.utc_iso(ev.ts), "bright_black"))]
        parts.append(Text.assemble(*[x for f in fields for x in ((f"{f} ", "bright_black"), (fmt.plain(f"{getattr(ev, f)}  "), ""))]))
        if ev.error:
            parts.append(Text.assemble(("error ", "bright_black"), (fmt.plain(ev.error), "bold red")))
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


@dataclass(frozen=True)
class SendRequest:
    """What the send form asks for: one body, posted ``count`` times."""

    body: dict[str, Any]
    count: int


class SendScreen(ModalScreen[SendRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    SendScreen { align: center middle; }
    SendScreen #send-dialog { width: 76; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    SendScreen #send-title { text-style: bold; margin-bottom: 1; }
    SendScreen RadioSet { layout: horizontal; border: none; height: 1; margin-bottom: 1; }
    SendScreen #send-row { height: 3; margin-top: 1; }
    SendScreen #send-row Label { padding: 1 1 0 0; }
    SendScreen #send-priority { width: 20; }
    SendScreen #send-count { width: 12; }
    SendScreen #send-error { color: $error; height: auto; margin-top: 1; }
    SendScreen #send-buttons { height: 3; margin-top: 1; align-horizontal: right; }
    SendScreen Button { margin-left: 2; }
    """

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def compose(self) -> ComposeResult:
        with Vertical(id="send-dialog"):
            yield Label(f"Send a test message → POST {self.target}", id="send-title")
            with RadioSet(id="send-mode"):
                yield RadioButton("Text", value=True, id="mode-text")
                yield RadioButton("JSON body", id="mode-json")
            yield Input(placeholder="message text", id="send-text")
            with Horizontal(id="send-row"):
                yield Label("Priority")
                yield Select([(p, p) for p in ("high", "normal", "low")], value="normal", allow_blank=False, id="send-priority")
                yield Label("  Count")
                yield Input("1", type="integer", id="send-count")
            yield Static("", id="send-error")
            with Horizontal(id="send-buttons"):
                yield Button("Cancel", id="send-cancel")
                yield Button("Send", variant="primary", id="send-ok")

    def on_mount(self) -> None:
        self.query_one("#send-text", Input).focus()

    @property
    def json_mode(self) -> bool:
        return self.query_one("#mode-json", RadioButton).value

    @on(RadioSet.Changed)
    def _mode(self) -> None:
        text = self.query_one("#send-text", Input)
        text.placeholder = '{"text": "hello", "priority": "high", "fail_times": 2}' if self.json_mode else "message text"
        self.query_one("#send-priority", Select).disabled = self.json_mode
        text.focus()

    def request(self) -> SendRequest | str:
        """The request, or why the form is not valid yet."""
        raw = self.query_one("#send-text", Input).value
        try:
            count = int(self.query_one("#send-count", Input).value or "0")
        except ValueError:
            count = 0
        if not 1 <= count <= 10_000:
            return "count must be between 1 and 10000"
        if self.json_mode:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                return f"not valid JSON: {exc}"
            if not isinstance(body, dict):
                return "the JSON body must be an object"
            return SendRequest(body, count)
        if not raw.strip():
            return "type some text to send"
        return SendRequest({"text": raw, "priority": self.query_one("#send-priority", Select).value}, count)

    @on(Input.Submitted)
    @on(Button.Pressed, "#send-ok")
    def _submit(self) -> None:
        req = self.request()
        if isinstance(req, str):
            self.query_one("#send-error", Static).update(req)
        else:
            self.dismiss(req)

    @on(Button.Pressed, "#send-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class DeadLetterScreen(Screen[None]):
    """One dead letter in full, with room for a long traceback; replay or purge it from here."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("enter,t", "trace", "Trace"),
        Binding("r", "replay", "Replay"),
        Binding("d", "purge", "Purge"),
        Binding("r,d", "app.read_only", show=False),  # what those keys do on a read-only console
    ]

    DEFAULT_CSS = """
    DeadLetterScreen #dlq-entry { height: 1fr; border: round $error 60%; padding: 0 1; }
    """

    def __init__(self, entry: DeadLetter, *, read_only: bool = False):
        super().__init__()
        self.entry = entry
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dlq-entry") as box:
            retitle(box, title=f"Dead letter {self.entry.id}", subtitle=self.entry.dlq)
            yield Static(dead_letter_text(self.entry), id="dlq-entry-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#dlq-entry", VerticalScroll).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (self.read_only and action in ("replay", "purge"))

    def action_trace(self) -> None:
        if self.entry.trace_id:
            self.post_message(OpenTrace(self.entry.trace_id, self.entry.message_id))

    def action_replay(self) -> None:
        self._chosen("replay")

    def action_purge(self) -> None:
        self._chosen("purge")

    def _chosen(self, action: str) -> None:
        self.app.post_message(DeadLettersChosen(action, (self.entry,), scope=f"the entry {self.entry.id}"))
        self.dismiss()


class ConfirmScreen(ModalScreen[bool]):
    """Asks before a write, naming what it will touch; anything but confirming changes nothing."""

    BINDINGS = [Binding("y", "confirm", "Confirm"), Binding("escape,n", "cancel", "Cancel", key_display="esc")]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen #confirm-dialog { width: 84; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    ConfirmScreen #confirm-question { text-style: bold; width: 1fr; }
    ConfirmScreen #confirm-detail { color: $text-muted; margin-top: 1; height: auto; }
    ConfirmScreen #confirm-buttons { height: 3; margin-top: 1; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """

    def __init__(self, question: str, detail: str = "", *, confirm: str = "OK", danger: bool = False):
        super().__init__()
        self.question = question
        self.detail = detail
        self.confirm = confirm
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog"):
            yield Label(self.question, id="confirm-question", markup=False)
            if self.detail:
                yield Static(Text(self.detail), id="confirm-detail")
            with Horizontal(id="confirm-buttons"):
                yield Button("Cancel", id="confirm-cancel")
                yield Button(self.confirm, variant="error" if self.danger else "warning", id="confirm-ok")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#confirm-ok", Button).focus()

    @on(Button.Pressed, "#confirm-ok")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)


@dataclass(frozen=True)
class StateEdit:
    """A checked new value for one state key (the editor closes with this only when the JSON is valid)."""

    group: str
    key: str
    value: Any
    #: The value the editor opened with: the save only lands if the key still holds it.
    original: Any = None


class InvalidValue(ValueError):
    """Why the editor's text cannot be stored, and where (1-based line and column), when it is a syntax error."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


def parse_state_value(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise InvalidValue(f"{name} is not JSON (the state store keeps strict JSON)")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidValue(f"Not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}", exc.lineno, exc.colno) from None
    if value is None:
        raise InvalidValue("null is not a value: to remove the key, close this and press d")
    return value


class StateEditScreen(ModalScreen[StateEdit | None]):
    """Edit one state value as pretty JSON; invalid JSON keeps the editor open with the error."""

    BINDINGS = [Binding("ctrl+s", "save", "Save"), Binding("escape", "cancel", "Cancel", key_display="esc")]

    DEFAULT_CSS = """
    StateEditScreen { align: center middle; }
    StateEditScreen #edit-dialog { width: 90%; height: 80%; border: thick $accent; background: $surface; padding: 0 1; }
    StateEditScreen #edit-title { text-style: bold; margin: 1 0; }
    StateEditScreen #state-editor { height: 1fr; }
    StateEditScreen #edit-error { color: $error; height: auto; }
    StateEditScreen #edit-buttons { height: 3; align-horizontal: right; }
    StateEditScreen #edit-hint { color: $text-muted; width: 1fr; padding-top: 1; }
    StateEditScreen Button { margin-left: 2; }
    """

    def __init__(self, group: str, key: str, value: Any):
        super().__init__()
        self.group = group
        self.key = key
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(id="edit-dialog"):
            yield Label(f"Edit state {self.group}/{self.key}", id="edit-title", markup=False)
            yield TextArea(fmt.pretty_json(self.value), id="state-editor", show_line_numbers=True, soft_wrap=False)
            yield Static("", id="edit-error")
            with Horizontal(id="edit-buttons"):
                yield Label("Saving is an ordinary change: a state.changed event, and state triggers fire.", id="edit-hint")
                yield Button("Cancel", id="edit-cancel")
                yield Button("Save", variant="primary", id="edit-save")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#state-editor", TextArea).focus()

    @on(Button.Pressed, "#edit-save")
    def action_save(self) -> None:
        editor = self.query_one("#state-editor", TextArea)
        try:
            value = parse_state_value(editor.text)
        except InvalidValue as exc:
            self.query_one("#edit-error", Static).update(Text(str(exc)))
            if exc.line is not None and exc.column is not None:
                editor.cursor_location = (exc.line - 1, exc.column - 1)  # on the mistake
            editor.focus()
            return
        self.dismiss(StateEdit(self.group, self.key, value, self.value))

    @on(Button.Pressed, "#edit-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


HELP = [
    ("Tabs", [("1 … 8", "Live, Messages, Queues, Dead letters, State, Cron, Workers, Steps"),
              ("tab / shift+tab", "move focus"), ("↑ ↓ pgup pgdn home end", "move in tables and logs")]),
    ("Actions", [("enter", "open the highlighted message's (or dead letter's) trace"),
                 ("/", "filter the event log, messages and dead letters"), ("esc", "back: close a screen, or clear the filter"),
                 ("p", "pause rendering (events keep being read; resumes where it was)"),
                 ("s", "send a test message (text or JSON, priority, count)"),
                 ("ctrl+p", "command palette"), ("?", "this help"), ("q", "quit")]),
    ("Dead letters (4)", [("i", "inspect the highlighted entry in full: payload, error, traceback"),
                          ("r / R", "replay the highlighted entry / every entry shown under the filter"),
                          ("d / D", "purge the highlighted entry / every entry shown under the filter"),
                          ("", "each asks first, naming how many entries it will touch")]),
    ("State (5)", [("e", "edit the highlighted key's JSON value (ctrl+s saves, esc cancels)"),
                   ("", "a save is refused if the value changed after the editor opened"),
                   ("d", "delete the highlighted key (asks first)")]),
    ("Cron (6)", [("r", "run the highlighted cron step now, outside its schedule (asks first; marked manual)")]),
    ("Read-only (attach)", [("s r R d D e", "hidden: a read-only console never writes to Redis")]),
    ("Filter", [("type:message.failed", "one event type; type:message. for a family"),
                ("topic:… step:… queue:…", "substring, or a glob with * ?"),
                ("trace:1a2b", "trace id prefix"), ("status:dead", "message status (Messages tab)"),
                ("words", "any other text must appear in the event")]),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "Close")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help { width: 104; height: auto; max-height: 90%; border: thick $accent; background: $surface; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        out: list[Text] = [Text("iii-console keys", style="bold")]
        for section, rows in HELP:
            out.append(Text(""))
            out.append(Text(section, style="bold underline"))
            for key, what in rows:
                out.append(Text.assemble((f"  {key:<26}", "bold cyan"), what))
        out.append(Text(""))
        out.append(Text("Colours", style="bold underline"))
        legend = Text("  ")
        for i, (typ, style) in enumerate((name, st) for name, st in TYPE_STYLE.items()
                                         if name.startswith(("message.", "http.", "notification.", "step.", "cron.fired", "state."))):
            if i and i % 5 == 0:
                legend.append("\n  ")
            legend.append(typ, style)
            legend.append("  ")
        out.append(legend)
        yield VerticalScroll(Static(lines(out)), id="help")
