"""Messages the tabs post up to the app."""

from __future__ import annotations

from textual.message import Message


class OpenTrace(Message):
    """Show the timeline of one trace (``enter`` on a message or a dead letter)."""

    def __init__(self, trace_id: str, message_id: str | None = None) -> None:
        super().__init__()
        self.trace_id = trace_id
        self.message_id = message_id


class StateGroupChosen(Message):
    """The State tab wants the values of another group."""

    def __init__(self, group: str) -> None:
        super().__init__()
        self.group = group
