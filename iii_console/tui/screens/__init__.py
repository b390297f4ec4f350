"""Screens over the tabs: a trace's timeline, a dead letter in full, the send form,
confirmations, the state editor, the key help."""

from __future__ import annotations

from iii_console.tui.screens.confirm import ConfirmScreen
from iii_console.tui.screens.dead_letter import DeadLetterScreen
from iii_console.tui.screens.help import HELP, HelpScreen
from iii_console.tui.screens.send import SendRequest, SendScreen
from iii_console.tui.screens.state_edit import InvalidValue, StateEdit, StateEditScreen, parse_state_value
from iii_console.tui.screens.trace import TraceScreen

__all__ = [
    "HELP",
    "ConfirmScreen",
    "DeadLetterScreen",
    "HelpScreen",
    "InvalidValue",
    "SendRequest",
    "SendScreen",
    "StateEdit",
    "StateEditScreen",
    "TraceScreen",
    "parse_state_value",
]
