"""The send form (``s``): a test message for one of the running server's ``POST`` routes.

The routes come from the step registry (``core/examples.py``): ``/messages`` first where the
project serves it (a text box, as ``iii-console send TEXT``), else its JSON routes, a select
when there are several, each pre-filled with an example body fitting its schema. With no
registry to go by the form posts to ``/messages``.
"""

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

from iii_console.core.examples import MESSAGES_PATH, Route


@dataclass(frozen=True)
class SendRequest:
    """What the send form asks for: one body, posted ``count`` times."""

    body: dict[str, Any]
    count: int
    #: The route it is posted to.
    path: str = MESSAGES_PATH


class SendScreen(ModalScreen[SendRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    SendScreen { align: center middle; }
    SendScreen #send-dialog { width: 76; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    SendScreen #send-title { text-style: bold; margin-bottom: 1; }
    SendScreen RadioSet { layout: horizontal; border: none; height: 1; margin-bottom: 1; }
    SendScreen #send-row { height: 3; margin-top: 1; }
    SendScreen #send-row Label { padding: 1 1 0 0; }
    SendScreen #send-route { margin-bottom: 1; }
    SendScreen #send-priority { width: 20; }
    SendScreen #send-count { width: 12; }
    SendScreen #send-error { color: $error; height: auto; margin-top: 1; }
    SendScreen #send-buttons { height: 3; margin-top: 1; align-horizontal: right; }
    SendScreen Button { margin-left: 2; }
    """

    def __init__(self, base_url: str, routes: list[Route] | None = None, *, again: SendRequest | None = None, error: str = ""):
        """``routes``: where to post (none known: ``/messages``); ``again``: a refused request to edit, ``error`` why."""
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.routes = list(routes or []) or [Route("POST", MESSAGES_PATH, "")]
        self.again = again
        self.error = error
        paths = [r.path for r in self.routes]
        self.path = again.path if again is not None and again.path in paths else paths[0]

    @property
    def target(self) -> str:
        return f"{self.base_url}{self.path}"

    @property
    def route(self) -> Route:
        return next(r for r in self.routes if r.path == self.path)

    def compose(self) -> ComposeResult:
        with Vertical(id="send-dialog"):
            yield Label(f"Send a test message → POST {self.target}", id="send-title")
            if len(self.routes) > 1:
                yield Select(
                    [(f"POST {r.path}" + (f"  ({r.step})" if r.step else ""), r.path) for r in self.routes],
                    value=self.path,
                    allow_blank=False,
                    id="send-route",
                )
            with RadioSet(id="send-mode"):
                yield RadioButton("Text", value=True, id="mode-text")
                yield RadioButton("JSON body", id="mode-json")
            yield Input(placeholder="message text", id="send-text")
            with Horizontal(id="send-row"):
                yield Label("Priority")
                yield Select([(p, p) for p in ("high", "normal", "low")], value="normal", allow_blank=False, id="send-priority")
                yield Label("  Count")
                yield Input("1", type="integer", id="send-count")
            yield Static(self.error, id="send-error", markup=False)
            with Horizontal(id="send-buttons"):
                yield Button("Cancel", id="send-cancel")
                yield Button("Send", variant="primary", id="send-ok")

    def on_mount(self) -> None:
        self._fit_route(self.again)
        self.query_one("#send-text", Input).focus()

    def _fit_route(self, again: SendRequest | None = None) -> None:
        """Set the form up for :attr:`path`: a text box for ``/messages``, else its example body as JSON."""
        self.query_one("#send-title", Label).update(f"Send a test message → POST {self.target}")
        text = self.query_one("#send-text", Input)
        json_only = self.path != MESSAGES_PATH
        self.query_one("#mode-text", RadioButton).disabled = json_only
        if again is not None:
            self.query_one("#mode-json", RadioButton).value = True
            text.value = json.dumps(again.body)
            self.query_one("#send-count", Input).value = str(again.count)
        elif json_only:
            self.query_one("#mode-json", RadioButton).value = True
            text.value = self.route.example_json
        else:
            self.query_one("#mode-text", RadioButton).value = True
            text.value = ""
        self._mode_shown()

    @on(Select.Changed, "#send-route")
    def _route(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.path:
            self.path = event.value
            self.query_one("#send-error", Static).update("")
            self._fit_route()

    @property
    def json_mode(self) -> bool:
        return self.query_one("#mode-json", RadioButton).value

    @on(RadioSet.Changed)
    def _mode(self) -> None:
        self._mode_shown()

    def _mode_shown(self) -> None:
        text = self.query_one("#send-text", Input)
        if not self.json_mode:
            text.placeholder = "message text"
        elif self.path == MESSAGES_PATH:
            text.placeholder = '{"text": "hello", "priority": "high", "fail_times": 2}'
        else:
            text.placeholder = self.route.example_json
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
            return SendRequest(body, count, self.path)
        if not raw.strip():
            return "type some text to send"
        return SendRequest({"text": raw, "priority": self.query_one("#send-priority", Select).value}, count, self.path)

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
