"""Where a command's output goes: event lines on a stdout kept for them alone, and tables.

``run --no-ui`` and ``tail`` print events here; a reader that goes away (``| head``), or
a terminal that hung up, ends the printing quietly instead of with a ``BrokenPipeError``
or an ``EIO``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from iii_console.core.events import Event
from iii_console.core.text import printable
from iii_console.runtime import hangup

#: Where events are printed: stdout, or a private copy of it once ``reserve_stdout`` ran.
_events_out: Any = None
#: Set when the reader of our stdout went away (``| head``): there is nobody left to print to.
_stdout_closed = False


def _out() -> Any:
    return _events_out if _events_out is not None else sys.stdout


def reserve_stdout() -> None:
    """Keep stdout for the event lines alone: anything else written to it goes to stderr.

    A ``print()`` in a step handler, a library that logs to stdout, or a worker
    process (they inherit the descriptor) would otherwise interleave with the JSON
    lines and break whatever parses them. Events keep a private duplicate of the
    original stdout; descriptor 1 then points at stderr.
    """
    global _events_out
    try:
        os.fstat(1)
    except OSError:
        # Started with stdout closed (`>&-`): Python left sys.stdout None, which breaks
        # libraries that log to it (uvicorn's logging config). Nobody reads events then.
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != 1:
            os.dup2(devnull, 1)
            os.close(devnull)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  (stdout for the life of the process)
    sys.stdout.flush()
    _events_out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    os.dup2(2, 1)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # now stderr-bound: shown as it is printed


def events_out() -> Any:
    """The file event lines are written to (stdout, or its private copy): the echo process's stdout."""
    return _out()


def _stdout_gone() -> None:
    """Point the event stream at /dev/null, so what is buffered and any later write go nowhere quietly."""
    global _stdout_closed
    _stdout_closed = True
    hangup.to_devnull(_out().fileno())


def _gone_or_raise(exc: OSError) -> None:
    """A write to stdout failed: a reader that went away (``EPIPE``) or a terminal that hung up
    (``EIO``) means nobody is left to print to, so printing goes quiet; anything else is raised."""
    if hangup.reader_gone(exc):
        _stdout_gone()
    else:
        raise exc


def print_json(ev: Event) -> None:
    """One JSON line; flushed by the caller once per batch read (``flush``), not per event."""
    from iii_console.format import json_line

    try:
        _out().write(json_line(ev) + "\n")
    except OSError as exc:
        _gone_or_raise(exc)


def flush_stdout() -> None:
    try:
        _out().flush()
    except OSError as exc:
        _gone_or_raise(exc)


print_json.flush = flush_stdout  # type: ignore[attr-defined]


def print_json_entries(entries: Any) -> None:
    """:func:`print_json` of each stream entry as read, without building the events
    (``format.json_line_of``), the batch written at once."""
    from iii_console.format import json_line_of

    try:
        _out().write("".join([json_line_of(entry_id, fields) + "\n" for entry_id, fields in entries]))
    except OSError as exc:
        _gone_or_raise(exc)


class _EventConsole(Console):
    """Rich's console for event lines: a reader that went away ends the printing quietly (Rich's own
    answer is ``SystemExit(1)``, which made ``tail | head -1`` fail under ``set -o pipefail``)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _stdout_gone()


def print_human(ev: Event) -> None:
    from iii_console.format import TYPE_STYLE, line

    con = print_human.__dict__.setdefault("console", _EventConsole(file=_out(), highlight=False, soft_wrap=True))
    try:
        con.print(Text(line(ev), style=TYPE_STYLE.get(ev.type, "")))
    except OSError as exc:
        _gone_or_raise(exc)


def stdout_closed() -> bool:
    """Whether the reader of our stdout went away: nobody is left to print to."""
    return _stdout_closed


def table_console() -> Console:
    """The console tables are printed on: stdout, no highlighting, no soft wrap."""
    return Console(highlight=False, soft_wrap=False)


def cell(value: Any) -> Text:
    """A table cell from stored text: never read as Rich markup, control characters escaped."""
    return Text(printable(value))
