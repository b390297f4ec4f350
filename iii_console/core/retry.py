"""``raise Retry(...)``: a handler asks to be run again at a given time.

For the failures that name their own wait: an SMTP ``421``, an HTTP ``429`` or
``503`` with ``Retry-After``, a provider's rate limit. The queue's strategy
still bounds the retries unless the handler says the wait is not a failure
(``counts=False``): then the message is run again at that time with its
attempt number unchanged, as often as the handler asks.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

#: The longest wait a Retry may ask for (the queue's own cap for backoff delays is 7 days too).
MAX_AFTER_MS = 7 * 86_400_000


class Retry(Exception):
    """Run this message again after ``after_ms`` milliseconds, or at ``at``.

    ``at`` is an aware ``datetime`` or epoch milliseconds; a time in the past
    means "now". With ``counts=True`` (the default) the retry is an attempt
    like any failure's: past ``max_retries`` the message is dead-lettered. With
    ``counts=False`` the attempt is not spent (``ctx.attempt`` stays the same).
    A wait longer than 7 days (``MAX_AFTER_MS``) is capped at 7 days.
    """

    def __init__(
        self,
        after_ms: int | float | None = None,
        *,
        at: datetime | int | float | None = None,
        counts: bool = True,
        reason: str = "",
    ):
        if (after_ms is None) == (at is None):
            raise TypeError("Retry takes after_ms=... or at=..., exactly one of them")
        if after_ms is not None:
            if (
                isinstance(after_ms, bool)
                or not isinstance(after_ms, (int, float))
                or not math.isfinite(after_ms)
                or after_ms < 0
            ):
                raise ValueError(f"Retry(after_ms=...) must be a finite number of milliseconds >= 0, not {after_ms!r}")
            self.due_ms: float | None = None
            self.after = int(min(after_ms, MAX_AFTER_MS))  # a longer wait is capped, as a date's is
        else:
            self.due_ms = _epoch_ms(at)
            self.after = 0
        self.counts = bool(counts)
        self.reason = reason
        super().__init__(reason or self._text())

    def _text(self) -> str:
        return f"retry at {self.due_ms:.0f} ms" if self.due_ms is not None else f"retry in {self.after} ms"

    def delay_ms(self, now_ms: float | None = None) -> int:
        """Milliseconds from ``now_ms`` (default: this host's clock) until the retry is due."""
        if self.due_ms is None:
            return self.after
        now = time.time() * 1000 if now_ms is None else now_ms
        return int(min(MAX_AFTER_MS, max(0.0, self.due_ms - now)))

    @classmethod
    def after_header(cls, value: str | int | float, *, counts: bool = True, reason: str = "") -> Retry:
        """From an HTTP ``Retry-After`` value: seconds (``"120"``) or an HTTP date
        (``"Wed, 21 Oct 2026 07:28:00 GMT"``)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Retry-After must be seconds >= 0 or an HTTP date, not {value!r}")
            return cls(after_ms=min(float(value) * 1000, MAX_AFTER_MS), counts=counts, reason=reason)
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = None
        if seconds is not None:
            if seconds < 0 or not math.isfinite(seconds):
                raise ValueError(f"Retry-After must be seconds >= 0 or an HTTP date, not {value!r}")
            return cls(after_ms=seconds * 1000, counts=counts, reason=reason)
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"Retry-After must be seconds >= 0 or an HTTP date, not {value!r}") from None
        return cls(at=when, counts=counts, reason=reason)


def _epoch_ms(at: Any) -> float:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("Retry(at=...) needs an aware datetime (tzinfo set), e.g. datetime.now(timezone.utc)")
        return at.astimezone(UTC).timestamp() * 1000
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise ValueError(f"Retry(at=...) must be an aware datetime or epoch milliseconds, not {at!r}")
    return float(at)
