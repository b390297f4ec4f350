"""The `/` filter: ``type:message.failed topic:message.sent step:Process trace:1a2b free text``.

Tokens with a known prefix match one field (``type:`` matches by prefix, so
``type:message.`` is a family and ``type:message.f`` already finds failures;
commas give alternatives); everything else is free text, matched case-insensitively
against the event's one-line summary. All tokens must match.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

from iii_console.core.events import Event
from iii_console.format import detail

FIELDS = ("type", "topic", "step", "trace", "status", "queue")


@dataclass(frozen=True)
class EventFilter:
    text: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    words: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, text: str) -> EventFilter:
        fields: list[tuple[str, str]] = []
        words: list[str] = []
        errors: list[str] = []
        for tok in text.split():
            name, sep, value = tok.partition(":")
            if sep and name.lower() in FIELDS:
                if value:
                    fields.append((name.lower(), value.lower()))
                else:
                    errors.append(f"{name}: needs a value")
            else:
                words.append(tok.lower())
        return cls(text.strip(), tuple(fields), tuple(words), tuple(errors))

    def __bool__(self) -> bool:
        return bool(self.fields or self.words)

    def matches(self, ev: Event) -> bool:
        for name, value in self.fields:
            if name == "type":
                if not _type_match(ev.type, value):
                    return False
            elif name == "trace":
                if not (ev.trace_id or "").lower().startswith(value):
                    return False
            elif name == "status":
                continue  # a message-row field; events pass
            elif not _glob(getattr(ev, name, None), value):
                return False
        if self.words:
            hay = " ".join(filter(None, (ev.type, ev.step, ev.topic, ev.trace_id, ev.message_id, ev.error, detail(ev)))).lower()
            return all(w in hay for w in self.words)
        return True

    def matches_values(
        self,
        *,
        type: str = "",
        topic: str | None = None,
        step: str | None = None,
        trace: str = "",
        status: str = "",
        text: Iterable[str | None] = (),
    ) -> bool:
        """For rows that are not events (messages, dead letters)."""
        for name, value in self.fields:
            if name == "type" and not _type_match(type, value):
                return False
            if name == "topic" and not _glob(topic, value):
                return False
            if name == "step" and not _glob(step, value):
                return False
            if name == "trace" and not (trace or "").lower().startswith(value):
                return False
            if name == "status" and not _glob(status, value):
                return False
        if self.words:
            hay = " ".join(t for t in (type, topic, step, trace, status, *text) if t).lower()
            return all(w in hay for w in self.words)
        return True


def _type_match(actual: str, wanted: str) -> bool:
    """``message.failed``, a family (``message.``), a glob, or several of those joined by commas."""
    if "," in wanted:
        return any(_type_match(actual, w) for w in wanted.split(",") if w)
    actual = actual.lower()
    if any(c in wanted for c in "*?["):
        return fnmatch.fnmatchcase(actual, wanted)
    return actual.startswith(wanted)


def _glob(actual: str | None, wanted: str) -> bool:
    """Substring match, or a glob when the value has wildcards."""
    a = (actual or "").lower()
    if any(c in wanted for c in "*?["):
        return fnmatch.fnmatchcase(a, wanted)
    return wanted in a
