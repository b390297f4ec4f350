"""Editing one state value: the form, and the parser that reads what is typed into it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static, TextArea

from iii_console.tui import fmt


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
    """Edit one state value as pretty JSON; invalid JSON keeps the editor open with the error.

    With ``save``, the editor writes the value itself (in a thread) and closes only once it
    is stored: a refused save (the key changed meanwhile, Redis away) leaves it open with the
    text as typed and the reason, so nothing typed is lost.
    """

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

    def __init__(self, group: str, key: str, value: Any, save: Callable[[StateEdit], None] | None = None):
        super().__init__()
        self.group = group
        self.key = key
        self.value = value
        self._save = save
        self._saving = False

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
        edit = StateEdit(self.group, self.key, value, self.value)
        if self._save is None:
            self.dismiss(edit)
            return
        if self._saving:
            return
        self._saving = True
        self.query_one("#edit-error", Static).update(Text("saving…", style="bright_black"))
        self._store(edit)

    @work(thread=True, group="state-save", exit_on_error=False)
    def _store(self, edit: StateEdit) -> None:
        assert self._save is not None
        try:
            self._save(edit)
        except Exception as exc:  # any refusal is shown in the editor, which keeps the text
            self.app.call_from_thread(self._refused, str(exc) or type(exc).__name__)
        else:
            self.app.call_from_thread(self.dismiss, edit)

    def _refused(self, reason: str) -> None:
        self._saving = False
        self.query_one("#edit-error", Static).update(Text(f"Save failed: {reason}"))
        self.app.notify(f"Save failed: {reason}", severity="error", markup=False)
        self.query_one("#state-editor", TextArea).focus()

    @on(Button.Pressed, "#edit-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
