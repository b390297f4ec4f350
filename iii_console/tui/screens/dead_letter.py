"""One dead letter in full: payload, error, traceback, attempts, with replay and purge."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from iii_console.core.dlq import DeadLetter
from iii_console.tui.messages import DeadLettersChosen, OpenTrace
from iii_console.tui.tabs.queues import dead_letter_text
from iii_console.tui.widgets import retitle


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
