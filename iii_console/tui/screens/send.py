"""The send form (``s``): a test message for the running server's ``POST /messages``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Select, Static


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
