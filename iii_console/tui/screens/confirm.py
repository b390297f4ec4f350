"""The yes/no question asked before anything is replayed, purged or deleted."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static


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
