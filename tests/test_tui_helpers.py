"""Shared pieces for the console tests: real events, a pinned clock, bounded waits.

(Named ``test_tui_*`` to live with the console's tests; it holds no tests itself.)
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Iterator

import pytest
import redis
from rich.text import Text

from iii_console.core.events import Event
from iii_console.core.keys import Keys

#: 2026-01-15 09:30:00 UTC: every snapshot and pinned-clock test runs "now" here.
T0_MS = 1_768_469_400_000
FIXED_NOW = T0_MS / 1000 + 90


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Wall-clock renderings (HH:MM:SS) in UTC, so they read the same on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def xadd(client: redis.Redis, keys: Keys, events: list[Event]) -> None:
    """Write events with stream ids derived from their timestamps, so ids are reproducible too."""
    pipe = client.pipeline(transaction=False)
    ms, seq = 0, -1
    for ev in events:
        ms, seq = (ev.ts, 0) if ev.ts > ms else (ms, seq + 1)
        pipe.xadd(keys.events, ev.encode(), id=f"{ms}-{seq}")
    pipe.execute()


def lifecycle(n: int, ts: int, *, fails: int = 0, dead: bool = False, priority: str = "normal",
              text: str = "hello", worker: str = "host-a:101:worker0", topic: str = "message.sent") -> list[Event]:
    """Every event of one message's life, as the runtime writes them: HTTP, queue hops, state, notification."""
    trace = f"{n:04d}" + "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"[:28]
    mid = f"{n:04d}beef-0000-4000-8000-00000000{n:04d}"
    record = f"rec{n:05d}"
    out = [
        Event("http.received", ts, trace, step="SendMessage", worker="host-a:100:supervisor",
              data={"method": "POST", "path": "/messages", "body": {"text": text, "priority": priority}}),
        Event("state.changed", ts + 1, trace, step="SendMessage",
              data={"group": "messages", "key": record, "op": "set", "old": None, "new": {"status": "queued"}}),
        Event("message.enqueued", ts + 2, trace, mid, "ProcessMessage", topic, f"{topic}--ProcessMessage--{priority}",
              worker="host-a:100:supervisor",
              data={"payload": {"id": record, "text": text}, "priority": priority, "delay_ms": 0, "source": "SendMessage"}),
    ]
    t = ts + 5
    attempts = fails + (0 if dead else 1)
    for attempt in range(1, attempts + 1):
        out.append(Event("message.started", t, trace, mid, "ProcessMessage", topic, attempt=attempt, worker=worker))
        if attempt <= fails:
            err = f"RuntimeError: simulated failure on attempt {attempt}"
            tb = ("Traceback (most recent call last):\n  File \"steps/process_message_step.py\", line 37, in handler\n"
                  f"    raise RuntimeError(f\"simulated failure on attempt {{ctx.attempt}}\")\n{err}\n")
            out.append(Event("message.failed", t + 3, trace, mid, "ProcessMessage", topic, attempt=attempt, worker=worker,
                             duration_ms=3.2, error=err, data={"traceback": tb}))
            if dead and attempt == attempts:
                out.append(Event("message.dead_lettered", t + 4, trace, mid, "ProcessMessage", topic, attempt=attempt,
                                 worker=worker, error=err, data={"dlq": f"{topic}.dlq", "attempts": attempts}))
            else:
                out.append(Event("message.retrying", t + 4, trace, mid, "ProcessMessage", topic, attempt=attempt + 1,
                                 worker=worker, error=err, data={"delay_ms": 1000 * 2 ** (attempt - 1)}))
            t += 1000 * 2 ** (attempt - 1)
        else:
            out.append(Event("message.processed", t + 20, trace, mid, "ProcessMessage", topic, attempt=attempt,
                             worker=worker, duration_ms=20.4))
            out.append(Event("state.changed", t + 21, trace, step="ProcessMessage",
                             data={"group": "messages", "key": record, "op": "update", "old": {"status": "processing"},
                                   "new": {"status": "processed"}}))
            out.append(Event("notification.sent", t + 23, trace, step="NotifyCompletion",
                             data={"channel": "log", "recipient": None, "message_id": record,
                                   "summary": f"message {record} processed (1 words)"}))
    return out


def plain(value: Any) -> str:
    """What a widget shows, as text."""
    if isinstance(value, Text):
        return value.plain
    return str(value)


def log_text(log: Any) -> str:
    """Every line a RichLog currently holds."""
    return "\n".join(strip.text for strip in log.lines)


async def until(pilot: Any, cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Let the app run until ``cond()`` is truthy (bounded; the test fails with ``what`` otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


async def started(pilot: Any) -> None:
    """Wait until the console has drawn once and its reader is connected (keys pressed before may race the mount)."""
    app = pilot.app
    await until(pilot, lambda: app.ready and app.link.connected, "the console to start")


async def settle(pilot: Any, ticks: int = 2) -> None:
    """Wait for ``ticks`` more render ticks of the app (so what was read is on screen)."""
    app = pilot.app
    start = app.render_count
    await until(pilot, lambda: app.render_count >= start + ticks, f"{ticks} render ticks")


Waiter = Callable[[Any, Callable[[], Any], str], Awaitable[Any]]
