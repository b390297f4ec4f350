"""Messages the tabs post up to the app, and the app's reader threads post to itself."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from iii_console.core.dlq import DeadLetter
from iii_console.core.events import Event
from iii_console.tui.source import Snapshot


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


class DeadLettersChosen(Message):
    """Replay or purge these entries (the highlighted one, or every one shown under the filter)."""

    def __init__(self, action: str, entries: tuple[DeadLetter, ...], *, scope: str = "") -> None:
        super().__init__()
        self.action = action  # "replay" or "purge"
        self.entries = entries
        #: How the entries were chosen, for the confirmation ("the 12 shown under filter step:X").
        self.scope = scope


class InspectDeadLetter(Message):
    """Show one dead letter in full."""

    def __init__(self, entry: DeadLetter) -> None:
        super().__init__()
        self.entry = entry


class StateKeyChosen(Message):
    """Edit or delete one state key."""

    def __init__(self, action: str, group: str, key: str, value: Any) -> None:
        super().__init__()
        self.action = action  # "edit" or "delete"
        self.group = group
        self.key = key
        self.value = value


class CronRunChosen(Message):
    """Run one cron step's trigger now (``iii-console cron run``)."""

    def __init__(self, step: str, expression: str) -> None:
        super().__init__()
        self.step = step
        self.expression = expression


class SnapshotReady(Message):
    """The poller read a new snapshot (queues, workers, dead letters, state, cron)."""

    def __init__(self, snap: Snapshot) -> None:
        super().__init__()
        self.snap = snap


class TraceFound(Message):
    """A trace searched for on the stream, with every event of it found."""

    def __init__(self, trace_id: str, events: list[Event]) -> None:
        super().__init__()
        self.trace_id = trace_id
        self.events = events
