"""The help screen (``?``): the keys, the tabs and the filter syntax."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from iii_console.format import TYPE_STYLE
from iii_console.tui.widgets import lines

HELP = [
    (
        "Tabs",
        [
            ("1 … 8", "Live, Messages, Queues, Dead letters, State, Cron, Workers, Steps"),
            ("tab / shift+tab", "move focus"),
            ("↑ ↓ pgup pgdn home end", "move in tables and logs"),
        ],
    ),
    (
        "Actions",
        [
            ("enter", "open the highlighted message's (or dead letter's) trace"),
            ("/", "filter the event log, messages and dead letters"),
            ("esc", "back: close a screen, or clear the filter"),
            ("p", "pause rendering (events keep being read; resumes where it was)"),
            ("s", "send a test message (text or JSON, priority, count)"),
            ("ctrl+p", "command palette"),
            ("?", "this help"),
            ("q", "quit"),
        ],
    ),
    (
        "Dead letters (4)",
        [
            ("i", "inspect the highlighted entry in full: payload, error, traceback"),
            ("r / R", "replay the highlighted entry / every entry shown under the filter"),
            ("d / D", "purge the highlighted entry / every entry shown under the filter"),
            ("", "each asks first, naming how many entries it will touch"),
        ],
    ),
    (
        "State (5)",
        [
            ("e", "edit the highlighted key's JSON value (ctrl+s saves, esc cancels)"),
            ("", "a save is refused if the value changed after the editor opened"),
            ("d", "delete the highlighted key (asks first)"),
        ],
    ),
    ("Cron (6)", [("r", "run the highlighted cron step now, outside its schedule (asks first; marked manual)")]),
    ("Read-only (attach)", [("s r R d D e", "hidden: a read-only console never writes to Redis")]),
    (
        "Filter",
        [
            ("type:message.failed", "one event type; type:message. for a family"),
            ("topic:… step:… queue:…", "substring, or a glob with * ?"),
            ("trace:1a2b", "trace id prefix"),
            ("status:dead", "message status (Messages tab)"),
            ("words", "any other text must appear in the event"),
        ],
    ),
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
        for i, (typ, style) in enumerate(
            (name, st)
            for name, st in TYPE_STYLE.items()
            if name.startswith(("message.", "http.", "notification.", "step.", "cron.fired", "state."))
        ):
            if i and i % 5 == 0:
                legend.append("\n  ")
            legend.append(typ, style)
            legend.append("  ")
        out.append(legend)
        yield VerticalScroll(Static(lines(out)), id="help")
