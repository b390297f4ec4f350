"""The example in ``steps/``, as a user runs it: the real CLI on real Redis, and the state each
message goes through. The cleanup step runs its real handler against real Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import redis

from iii_console.core.dlq import DeadLetterStore
from iii_console.core.events import Event
from iii_console.core.keys import Keys

from ..helpers import ROOT, events, make_project, start_cli, wait_for

pytestmark = pytest.mark.slow

KEYS = Keys()
CONFIG = """
server:
  port: 0
queues:
  message.sent:
    max_retries: 2
    retry_delay: 100
    dead_letter_queue: message.sent.dlq
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_server):
    root = tmp_path_factory.mktemp("seed")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    shutil.copytree(ROOT / "steps", root / "steps")
    make_project(root, {}, CONFIG, redis_url=redis_server.url)
    run = start_cli(root, "--no-ui")
    run.root = root  # type: ignore[attr-defined]
    yield run
    assert run.stop() == 0


@pytest.fixture
def rc(app, redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def record(r: redis.Redis, key: str) -> dict | None:
    raw = r.hget(KEYS.state_group("messages"), key)
    return json.loads(raw) if raw else None


def lifecycle(r: redis.Redis, key: str) -> list[dict]:
    """Every value the message's record took, in order."""
    return [e.data["new"] for e in events(r, KEYS, "state.changed") if e.data["group"] == "messages" and e.data["key"] == key]


def mine(r: redis.Redis, trace: str, type: str) -> list[Event]:
    return [e for e in events(r, KEYS, type) if e.trace_id == trace]


def send_topic(app, data: dict, priority: str = "normal") -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iii_console",
            "send",
            "--topic",
            "message.sent",
            "--data",
            json.dumps(data),
            "--priority",
            priority,
            "--json",
        ],
        cwd=app.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])["trace_id"]


def test_a_message_is_queued_processed_and_notified_once_with_its_priority(app, rc):
    """Given POST /messages with priority high, then the answer is 202 with id and trace, the record goes
    queued -> processing -> processed with its timestamps, the work is the high-priority path, and exactly one
    notification names the recipient, all on the request's trace."""
    resp = httpx.post(
        f"{app.url}/messages", json={"text": "hello there world", "priority": "high", "recipient": "ada@example.com"}
    )
    assert resp.status_code == 202
    body = resp.json()
    mid, trace = body["id"], body["trace_id"]
    assert body == {"id": mid, "trace_id": trace, "status": "queued"} and resp.headers["x-trace-id"] == trace
    [note] = wait_for(lambda: mine(rc, trace, "notification.sent"), what="the notification")
    assert note.step == "NotifyCompletion" and note.data["recipient"] == "ada@example.com" and note.data["message_id"] == mid
    assert [v["status"] for v in lifecycle(rc, mid)] == ["queued", "processing", "processed"]
    final = record(rc, mid)
    assert final["priority"] == "high" and final["attempts"] == 1 and final["trace_id"] == trace
    assert final["result"] == {"length": 17, "words": 3} and "error" not in final
    assert final["created_ms"] <= final["started_ms"] <= final["finished_ms"]
    [enq] = [e for e in mine(rc, trace, "message.enqueued") if e.step == "ProcessMessage"]
    assert enq.topic == "message.sent" and enq.data["priority"] == "high" and enq.data["source"] == "SendMessage"
    [log] = [e for e in mine(rc, trace, "log") if e.data["message"] == "message processed"]
    assert log.step == "ProcessMessage" and log.data["work_ms"] == 5  # the high-priority path


def test_a_failing_message_is_recorded_as_retrying_then_failed_and_dead_lettered(app, rc):
    """Given a message that fails every attempt (max_retries 2), then each failure is recorded with its error and
    attempt count (`retrying` while the queue will run it again, `failed` with finished_ms after the last), the
    error is re-raised each time (three message.failed), and the message ends in message.sent.dlq, unnotified."""
    resp = httpx.post(f"{app.url}/messages", json={"text": "doomed", "fail_times": 99})
    mid, trace = resp.json()["id"], resp.json()["trace_id"]
    wait_for(lambda: mine(rc, trace, "message.dead_lettered"), what="the dead letter")
    values = lifecycle(rc, mid)
    assert [(v["status"], v["attempts"]) for v in values] == [
        ("queued", 0),
        ("processing", 1),
        ("retrying", 1),
        ("processing", 2),
        ("retrying", 2),
        ("processing", 3),
        ("failed", 3),
    ]
    assert [v.get("error") for v in values if v["status"] in ("retrying", "failed")] == [
        f"RuntimeError: simulated failure on attempt {n}" for n in (1, 2, 3)
    ]
    assert [("finished_ms" in v) for v in values] == [False] * 6 + [True]
    assert [e.attempt for e in mine(rc, trace, "message.failed")] == [1, 2, 3]
    [entry] = [e for e in DeadLetterStore(rc, KEYS).list("message.sent.dlq") if e.trace_id == trace]
    assert entry.attempts == 3 and entry.data["id"] == mid
    assert not mine(rc, trace, "notification.sent")


def test_a_flaky_message_recovers_and_its_error_is_cleared(app, rc):
    """Given a message that fails its first attempt only, then it goes retrying -> processing -> processed with
    2 attempts, the recorded error is removed, and it is notified once."""
    resp = httpx.post(f"{app.url}/messages", json={"text": "flaky", "fail_times": 1, "priority": "low"})
    mid, trace = resp.json()["id"], resp.json()["trace_id"]
    wait_for(lambda: mine(rc, trace, "notification.sent"), what="the notification")
    assert [v["status"] for v in lifecycle(rc, mid)] == ["queued", "processing", "retrying", "processing", "processed"]
    final = record(rc, mid)
    assert final["attempts"] == 2 and "error" not in final
    [log] = [e for e in mine(rc, trace, "log") if e.data["message"] == "message processed"]
    assert log.data["work_ms"] == 50  # the low-priority path
    assert len(mine(rc, trace, "notification.sent")) == 1


def test_a_redelivered_copy_of_a_processed_message_does_nothing(app, rc):
    """Given a processed message, when a copy of it arrives again (delivery is at least once), then the copy is
    skipped: the record keeps its one attempt and no second notification is sent."""
    text = "sent twice"
    trace1 = send_topic(app, {"id": "dup-1", "text": text})
    wait_for(lambda: mine(rc, trace1, "notification.sent"), what="the first notification")
    before = record(rc, "dup-1")
    trace2 = send_topic(app, {"id": "dup-1", "text": text})
    [skip] = wait_for(lambda: [e for e in mine(rc, trace2, "log") if "already processed" in e.data["message"]], what="the skip")
    assert skip.step == "ProcessMessage"
    wait_for(lambda: mine(rc, trace2, "message.processed"), what="the copy acked")
    assert record(rc, "dup-1") == before and before["attempts"] == 1
    assert [e.data["message_id"] for e in events(rc, KEYS, "notification.sent")].count("dup-1") == 1


def test_a_message_enqueued_straight_to_the_topic_gets_a_record_with_its_delivery_priority(app, rc):
    """Given `send --topic message.sent --priority low` with an id nobody recorded, then the worker starts the
    record itself, with the priority the message was delivered with, and processes it."""
    trace = send_topic(app, {"id": "direct-1", "text": "straight in"}, priority="low")
    wait_for(lambda: mine(rc, trace, "notification.sent"), what="the notification")
    assert [v["status"] for v in lifecycle(rc, "direct-1")] == ["queued", "processing", "processed"]
    assert record(rc, "direct-1")["priority"] == "low" and record(rc, "direct-1")["trace_id"] == trace


def test_data_that_does_not_fit_the_topic_goes_straight_to_the_dead_letter_queue(app, rc):
    """Given data on message.sent without an id, then it is dead-lettered after one attempt with the validation
    error (retrying cannot fix it), and no record is written."""
    trace = send_topic(app, {"text": "who am I"})
    [dead] = wait_for(lambda: mine(rc, trace, "message.dead_lettered"), what="the dead letter")
    assert dead.data["attempts"] == 1 and not mine(rc, trace, "message.retrying")
    [entry] = [e for e in DeadLetterStore(rc, KEYS).list("message.sent.dlq") if e.trace_id == trace]
    assert "MessageSent" in entry.error and "id" in entry.error and "Field required" in entry.error
    assert not mine(rc, trace, "state.changed")


# --- the state trigger's condition and the cleanup, run directly ------------------------------


def test_notify_fires_only_on_the_transition_to_processed():
    """Given the seed's condition, then only a change whose status becomes processed passes it: not a later
    write to a processed message, not its deletion, not any other status."""
    from iii_console.core.context import StateChange
    from iii_console.core.discovery import discover

    [step] = [s for s in discover(ROOT / "steps").steps if s.name == "NotifyCompletion"]
    condition = step.triggers[0].condition

    def passes(old, new) -> bool:
        return condition(StateChange("messages", "k", old, new))

    assert passes({"status": "processing"}, {"status": "processed"})
    assert passes(None, {"status": "processed"})
    assert not passes({"status": "processed"}, {"status": "processed", "note": "edited later"})
    assert not passes({"status": "processed"}, None)
    for status in ("queued", "processing", "retrying", "failed"):
        assert not passes({"status": "queued"}, {"status": status})


def test_cleanup_removes_finished_messages_older_than_the_retention(tmp_path, redis_server):
    """Given processed and failed messages on both sides of the retention, and messages still on their way, when
    the cleanup step's handler runs for a tick, then exactly the finished ones older than the retention go."""
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.context import CronTick
    from iii_console.core.discovery import discover
    from iii_console.core.state import StateStore
    from iii_console.runtime.runner import StepRunner
    from iii_console.runtime.services import Services

    keys = Keys("cleanup-test:")  # its own prefix: the module's running app shares this Redis
    cfg = make_project(tmp_path, {}, f"redis:\n  url: {redis_server.url}\n  prefix: 'cleanup-test:'\n")
    found = discover(ROOT / "steps")
    [step] = [s for s in found.steps if s.name == "CleanupMessages"]
    retention_ms = 3600 * 1000  # MESSAGE_RETENTION_S's default
    tick_ms = int(time.time() * 1000)
    old, recent = tick_ms - retention_ms - 1, tick_ms - retention_ms + 60_000
    messages = {
        "processed-old": {"status": "processed", "finished_ms": old},
        "processed-recent": {"status": "processed", "finished_ms": recent},
        "failed-old": {"status": "failed", "finished_ms": old},
        "failed-recent": {"status": "failed", "finished_ms": recent},
        "queued-old": {"status": "queued", "created_ms": old},
        "processing-old": {"status": "processing", "started_ms": old},
        "retrying-old": {"status": "retrying", "started_ms": old},
    }
    client = redis.Redis.from_url(redis_server.url)
    services = Services.open(cfg, "test")
    try:
        store = StateStore(client, keys)
        for k, v in messages.items():
            store.set("messages", k, v)
        StepRunner(services, subscriptions_for(found.steps)).call_sync(
            step, CronTick(scheduled_ms=tick_ms, fired_ms=tick_ms), trace_id="t-cleanup", trigger={"type": "cron"}
        )
        assert sorted(store.list("messages")) == [
            "failed-recent",
            "processed-recent",
            "processing-old",
            "queued-old",
            "retrying-old",
        ]
    finally:
        services.close()
        for k in client.scan_iter(match="cleanup-test:*"):
            client.delete(k)
        client.close()
