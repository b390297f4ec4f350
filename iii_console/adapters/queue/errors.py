"""Errors of the queue adapter."""

from __future__ import annotations

from iii_console.core.errors import IIIError


class EnqueueError(IIIError):
    """The message could not be enqueued (bad priority, not JSON, a bad dedup key or group...)."""
