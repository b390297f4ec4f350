"""Batches: a queue trigger's ``batch`` hands its handler a list of messages' data.

Each message keeps its own life (started, processed or failed, retried,
dead-lettered), so a handler can fail some of a batch: ``raise
BatchFailures({index: error})`` fails those and processes the rest; any other
exception fails the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BatchFailures(Exception):
    """Fail only the batch items at these indexes (an exception, or a message to fail with)."""

    def __init__(self, failures: Mapping[int, BaseException | str]):
        if not isinstance(failures, Mapping) or not failures:
            raise TypeError("BatchFailures takes a non-empty {index: exception or message} mapping")
        self.failures = {int(i): (e if isinstance(e, BaseException) else RuntimeError(str(e))) for i, e in failures.items()}
        super().__init__(f"{len(self.failures)} item(s) of the batch failed: indexes {sorted(self.failures)}")

    def outcome(self, size: int) -> list[BaseException | None]:
        """Per item: its exception, or None (processed)."""
        bad = [i for i in self.failures if not 0 <= i < size]
        if bad:
            raise IndexError(f"BatchFailures names indexes {bad} outside the batch of {size}")
        return [self.failures.get(i) for i in range(size)]


def outcomes(exc: BaseException | None, size: int) -> list[BaseException | None]:
    """What each of ``size`` items gets from a batch handler that raised ``exc`` (or returned)."""
    if exc is None:
        return [None] * size
    if isinstance(exc, BatchFailures):
        try:
            return exc.outcome(size)
        except IndexError as bad:
            return [bad] * size
    return [exc] * size


def describe_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``ctx.trigger`` fields of a batch run: its size and message ids."""
    return {"size": len(items), "message_ids": [m.get("message_id") for m in items]}
