"""Text from events, payloads and errors made safe to print on a terminal.

Group and key names, exception texts, log messages and percent-decoded paths are
chosen by whoever sends a request or writes a step; printed raw, an ESC sequence
in them recolours, clears or retitles the operator's terminal, and a newline
forges a line of its own. :func:`printable` writes every control character as
its escape (``\\x1b``, ``\\n``) instead.
"""

from __future__ import annotations

import re

#: C0 controls, DEL, C1 controls, and the Unicode controls that reorder or break
#: lines on a terminal (bidi overrides and isolates, line and paragraph separators).
#: Lone surrogates too: valid in JSON (``"\\ud800"``) and in Python text, but no terminal encoding can
#: write them (a ``UnicodeEncodeError`` at the print).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_CONTROL_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object, *, keep_lines: bool = False) -> str:
    """``text`` with every control character written as its escape.

    ``keep_lines`` keeps newlines and tabs (a traceback, pretty-printed JSON);
    everything else that could move the cursor or start an escape sequence is
    escaped either way.
    """
    s = text if isinstance(text, str) else str(text)
    pattern = _CONTROL_KEEP_LINES if keep_lines else _CONTROL
    return pattern.sub(_escape, s) if pattern.search(s) else s


def first_line(text: object) -> str:
    """The first non-blank line of ``text``, plus ``(+N lines)`` when there are more.

    A multi-line error (a pydantic ``ValidationError`` names each field on its own
    lines) reads as one line in a log or a list; the whole text is for a detail view.
    """
    s = text if isinstance(text, str) else str(text)
    if "\n" not in s:
        return s
    rows = [r for r in s.splitlines() if r.strip()]
    if len(rows) <= 1:
        return rows[0] if rows else ""
    return f"{rows[0].rstrip()} (+{len(rows) - 1} lines)"
