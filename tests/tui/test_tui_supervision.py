"""The console shows supervision: Redis restarts in the header and Problems, recycled
worker processes with their reason in Workers, time-limited failures as such."""

from __future__ import annotations

import time

import pytest
from textual.widgets import RichLog

from iii_console.core.events import Event
from iii_console.tui.widgets import EventList

from ..helpers import SIZE, console, log_text, started, topbar, until

pytestmark = pytest.mark.anyio


def _now() -> int:
    return int(time.time() * 1000)


async def test_redis_restarts_show_in_the_header_and_problems(redis_url, emit):
    """Given the embedded Redis died and came back, when the console reads it, then the bar counts the restart and Problems says why."""
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        assert "Redis restarted" not in topbar(app)
        emit(
            [
                Event(
                    "redis.down",
                    _now(),
                    error="embedded redis-server (pid 4242) killed by SIGKILL",
                    data={"pid": 4242, "exit": "killed by SIGKILL", "attempt": 0, "restart_in_ms": 0, "restarts": 0},
                ),
                Event(
                    "redis.restarted",
                    _now(),
                    data={"pid": 4343, "previous_pid": 4242, "down_ms": 120, "attempts": 1, "restarts": 1},
                ),
            ]
        )
        await until(pilot, lambda: "Redis restarted 1×" in topbar(app), "the restart in the bar")
        problems = app.query_one("#problems", RichLog)
        await until(pilot, lambda: "killed by SIGKILL" in log_text(problems), "the death in Problems")
        assert "redis down" in log_text(problems)


async def test_time_limited_failures_are_labelled_and_recycled_workers_show_their_reason(redis_url, emit):
    """Given a handler that hit its time limit and a worker replaced at its memory limit, then Problems says 'timed out' and Workers says 'recycled (max_memory_mb)'."""
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        emit(
            [
                Event(
                    "message.failed",
                    _now(),
                    message_id="m1",
                    step="Slow",
                    topic="jobs",
                    attempt=1,
                    error="TimeLimitExceeded: handler ran past queues.jobs.time_limit_ms (400 ms)",
                ),
                Event(
                    "worker.stopped",
                    _now(),
                    data={
                        "id": "abcdef0123",
                        "reason": "recycled",
                        "cause": "max_memory_mb",
                        "detail": "resident memory 251 MiB after 4 messages (workers.max_memory_mb: 250)",
                        "messages": 4,
                        "rss_mb": 251.0,
                    },
                ),
            ]
        )
        problems = app.query_one("#problems", RichLog)
        await until(pilot, lambda: "timed out" in log_text(problems), "the time-limited failure labelled")
        assert "time_limit_ms (400 ms)" in log_text(problems)
        await pilot.press("7")
        workers = lambda: log_text(app.query_one("#worker-events", EventList))  # noqa: E731
        await until(pilot, lambda: "recycled (max_memory_mb)" in workers(), "the recycled worker in Workers")
        assert "resident memory 251 MiB" in workers()
