"""How the console looks, pinned: the same Redis data, clock and ids give the same screen.

Update after an intended change with ``pytest tests/tui/test_tui_snapshots.py --snapshot-update``
and review the SVGs in ``tests/tui/__snapshots__/test_tui_snapshots/``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from iii_console.core.dlq import DeadLetter
from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.tui import ConsoleApp, create_app

from ..helpers import T0_MS, lifecycle, until, xadd

NOW_MS = T0_MS + 12_500
SIZE = (160, 45)

STEPS = {
    "CleanupMessages": {
        "name": "CleanupMessages",
        "file": "steps/cleanup_messages_step.py",
        "triggers": ["cron */5 * * * *"],
        "trigger_specs": [{"type": "cron", "expression": "*/5 * * * *"}],
        "enqueues": [],
        "flows": ["messaging"],
        "description": "Removes processed messages older than the retention",
    },
    "NotifyCompletion": {
        "name": "NotifyCompletion",
        "file": "steps/notify_completion_step.py",
        "triggers": ["state messages/* (conditional)"],
        "trigger_specs": [{"type": "state", "group": "messages", "key": "*", "conditional": True}],
        "enqueues": [],
        "flows": ["messaging"],
        "description": "Notifies the recipient when their message is processed",
    },
    "ProcessMessage": {
        "name": "ProcessMessage",
        "file": "steps/process_message_step.py",
        "triggers": ["queue message.sent"],
        "trigger_specs": [{"type": "queue", "topic": "message.sent", "input": None}],
        "enqueues": [],
        "flows": ["messaging"],
        "description": "Processes queued messages in the background",
    },
    "SendMessage": {
        "name": "SendMessage",
        "file": "steps/send_message_step.py",
        "triggers": ["POST /messages"],
        "trigger_specs": [{"type": "http", "method": "POST", "path": "/messages", "body": "MessageIn"}],
        "enqueues": ["message.sent"],
        "flows": ["messaging"],
        "description": "Receives a message over HTTP and queues it for background processing",
    },
}
STRATEGIES = {
    "default": {
        "max_retries": 3,
        "retry_delay": 1000,
        "backoff": "exponential",
        "max_retry_delay": 3600000,
        "concurrency": 10,
        "dead_letter_queue": "dead-letters",
        "priority": "normal",
    },
    "message.sent": {
        "max_retries": 2,
        "retry_delay": 2000,
        "backoff": "exponential",
        "max_retry_delay": 3600000,
        "concurrency": 4,
        "dead_letter_queue": "message.sent.dlq",
        "priority": "normal",
    },
}
WORKER = {
    "id": "7f3e9c1a-5b2d-4e8f-9a61-0c4d2e8b7f10",
    "name": "host-a:101:worker0",
    "host": "host-a",
    "pid": 101,
    "queues": {"message.sent": 4, "_cron.CleanupMessages": 8, "_state.NotifyCompletion": 8},
    "in_flight": 1,
    "started_ms": T0_MS - 3_600_000,
}


def seed(r: redis.Redis, keys: Keys) -> int:
    """A small, fixed world: three messages (one retried, one dead), a cron run, a worker, state and a DLQ entry."""
    events = (
        lifecycle(1, T0_MS)
        + lifecycle(2, T0_MS + 1500, fails=1)
        + lifecycle(3, T0_MS + 3000, fails=3, dead=True, priority="high", text="boom")
        + lifecycle(4, T0_MS + 9000, priority="low", text="slow lane")
    )
    events += [
        Event("worker.started", T0_MS - 5000, worker=WORKER["name"], data=WORKER),
        Event(
            "cron.fired",
            T0_MS + 500,
            "c0ffee00c0ffee00c0ffee00c0ffee00",
            step="CleanupMessages",
            data={"expression": "*/5 * * * *", "scheduled_ms": T0_MS + 480, "fired_ms": T0_MS + 492, "drift_ms": 12},
        ),
        Event(
            "log",
            T0_MS + 510,
            "c0ffee00c0ffee00c0ffee00c0ffee00",
            step="CleanupMessages",
            data={"level": "info", "message": "cleanup done", "removed": 0, "retention_s": 3600},
        ),
    ]
    events.sort(key=lambda e: e.ts)
    xadd(r, keys, events)
    pipe = r.pipeline()
    for name, d in STEPS.items():
        pipe.hset(keys.steps_registry, name, json.dumps(d))
    for topic, d in STRATEGIES.items():
        pipe.hset(keys.queues_registry, topic, json.dumps(d))
    pipe.hset(keys.workers, WORKER["id"], json.dumps(WORKER))
    pipe.zadd(keys.worker_heartbeats, {WORKER["id"]: NOW_MS - 1200})
    ns = keys.dramatiq_namespace
    pipe.rpush(f"{ns}:message.sent--ProcessMessage--normal", "m1", "m2", "m3")
    pipe.rpush(f"{ns}:message.sent--ProcessMessage--high", "m4")
    pipe.rpush(f"{ns}:message.sent--ProcessMessage--normal.DQ", "m5")
    pipe.sadd(f"{ns}:__acks__.{WORKER['id']}.message.sent--ProcessMessage--normal", "m6")
    dead = next(e for e in events if e.type == "message.dead_lettered")
    failed = [e for e in events if e.type == "message.failed" and e.message_id == dead.message_id]
    entry = DeadLetter(
        id="dl-0003",
        dlq="message.sent.dlq",
        error=dead.error or "",
        topic="message.sent",
        step="ProcessMessage",
        queue="message.sent--ProcessMessage--high",
        message_id=dead.message_id,
        trace_id=dead.trace_id,
        data={"id": "rec00003", "text": "boom"},
        attempts=3,
        first_failure_ms=failed[0].ts,
        last_failure_ms=dead.ts,
        priority="high",
        traceback=failed[-1].data["traceback"],
    )
    pipe.sadd(keys.dlq_names, "message.sent.dlq")
    pipe.zadd(keys.dlq("message.sent.dlq"), {entry.id: entry.last_failure_ms})
    pipe.hset(keys.dlq_entries("message.sent.dlq"), entry.id, entry.encode())
    pipe.sadd(keys.state_groups, "messages")
    for n, status in ((1, "processed"), (2, "processed"), (3, "failed"), (4, "processed")):
        pipe.hset(
            keys.state_group("messages"),
            f"rec{n:05d}",
            json.dumps(
                {
                    "id": f"rec{n:05d}",
                    "status": status,
                    "priority": "normal",
                    "attempts": 1 + (n == 2) + 2 * (n == 3),
                    "text": "boom" if n == 3 else "hello",
                },
                sort_keys=True,
            ),
        )
    pipe.set(keys.cron_last("CleanupMessages", "*/5 * * * *"), json.dumps({"scheduled_ms": T0_MS + 480, "fired_ms": T0_MS + 492}))
    pipe.execute()
    return len(events)


@pytest.fixture
def app(r, keys, redis_url, utc) -> ConsoleApp:
    n = seed(r, keys)
    console = create_app(redis_url=redis_url, clock=lambda: NOW_MS / 1000)
    console.where = "redis://127.0.0.1:6379/0 iii:"  # the test Redis port changes every run
    console.tick_s, console.poll_s = 0.1, 0.3
    console.expected_events = n  # type: ignore[attr-defined]
    return console


def ready(*parts: str, keys: tuple[str, ...] = ()) -> Any:
    """A run_before: wait until every event is read and the wanted snapshot parts are polled, then press ``keys``."""

    async def run_before(pilot: Any) -> None:
        app = pilot.app
        app.animation_level = "none"
        await until(pilot, lambda: app.ready and app.model.seq == app.expected_events and app.link.connected, "every event read")
        if keys:
            await pilot.press(*keys)
        need = {"registry", "workers", *parts}
        await until(pilot, lambda: need <= app.snap.loaded, f"snapshot parts {need}")
        start = app.render_count
        await until(pilot, lambda: app.render_count >= start + 2, "two render ticks")

    return run_before


def test_live(app, snap_compare):
    """Counters with rates and sparklines, the colour-coded event log and the problems panel."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready())


def test_messages(app, snap_compare):
    """One row per message with status, attempts, priority, age and duration."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready(keys=("2",)))


def test_trace_of_a_retried_message(app, snap_compare):
    """The timeline of a message that failed once, with the failed event's traceback below."""

    async def run_before(pilot: Any) -> None:
        await ready(keys=("2",))(pilot)
        table = pilot.app.query_one("#messages-table")
        table.move_cursor(row=table.row_keys.index(lifecycle(2, 0)[2].message_id))
        await pilot.press("enter")
        await until(pilot, lambda: pilot.app.screen.query("#timeline") and pilot.app.screen.searched, "the trace")
        timeline = pilot.app.screen.query_one("#timeline")
        timeline.move_cursor(row=4)  # message.failed
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_queues(app, snap_compare):
    """Depth by priority, delayed, in flight, throughput, failures and each topic's strategy."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready("queues", keys=("3",)))


def test_dead_letters(app, snap_compare):
    """The dead-letter entry with its error, payload and traceback."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready("dlq", keys=("4",)))


def test_state(app, snap_compare):
    """Groups, keys (recently changed first) and the highlighted key's JSON value."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready("state", keys=("5",)))


def test_replay_confirmation(app, snap_compare):
    """Replaying every dead letter shown asks first, with the count and the dead-letter queue."""

    async def run_before(pilot: Any) -> None:
        await ready("dlq", keys=("4",))(pilot)
        await pilot.press("R")
        await until(pilot, lambda: pilot.app.screen.query("#confirm-question"), "the confirmation")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_state_editor_with_a_json_error(app, snap_compare):
    """The editor keeps invalid JSON open, naming the line and column of the mistake."""

    async def run_before(pilot: Any) -> None:
        await ready("state", keys=("5",))(pilot)
        await pilot.press("e")
        await until(pilot, lambda: pilot.app.screen.query("#state-editor"), "the editor")
        editor = pilot.app.screen.query_one("#state-editor")
        editor.load_text('{\n  "status": "processed",\n  "attempts": 1,\n}')
        await pilot.press("ctrl+s")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_cron(app, snap_compare):
    """Each cron step's expression, next fire, last run and drift, and recent runs."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready("cron", keys=("6",)))


def test_workers(app, snap_compare):
    """Worker instances with host, pid, queues and concurrency, in flight and heartbeat."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready(keys=("7",)))


def test_steps(app, snap_compare):
    """Every step with its triggers and enqueues, and the flow they make."""
    assert snap_compare(app, terminal_size=SIZE, run_before=ready(keys=("8",)))
