"""The event stream end to end: a real `iii-console --no-ui` (server, worker process, scheduler)
on a real port against real Redis. Every event type reaches the stream with the fields that
apply to it; one trace follows a message through retries, state changes and the state step it
triggers; and emitting never waits on Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis

from iii_console.core.events import DATA_MAX_BYTES, EVENT_TYPES, REDACTED, Event

from ..helpers import REQUIRED, ROOT, cli_send, events, events_once, make_project, start_cli, wait_for

pytestmark = pytest.mark.slow

TICKER = """
from iii_console import Step, cron
config = Step(name="Ticker", triggers=[cron("*/2 * * * * *")])
def handler(tick, ctx):
    ctx.logger.info("tick", password="hunter2", scheduled=tick.scheduled_ms)
"""

SLEEPER = """
import time
from iii_console import Step, queue
config = Step(name="Sleeper", triggers=[queue("slow")])
def handler(data, ctx):
    time.sleep(60)
"""

PRIMS = """
from iii_console import Step, queue
config = Step(name="Prims", triggers=[queue("prims")])
def handler(data, ctx):
    ctx.progress(1, 2, note="half")
    ctx.enqueue("prims.child", {"n": 1}, dedup_key="d1")
    ctx.enqueue("prims.child", {"n": 1}, dedup_key="d1")  # deduplicated
    ctx.enqueue("prims.child", {"n": 1, "again": True})   # throttled: one start per key a minute
    ctx.enqueue_group("prims.child", [{"n": 2}], then="prims.done")
"""

CHILD = """
from iii_console import Step, queue
config = Step(name="PrimsChild", triggers=[queue("prims.child"), queue("prims.done")])
def handler(data, ctx):
    pass
"""

CONFIG = """
server:
  port: 0
queues:
  prims.child:
    throttle: {key: n, limit: 1, period_ms: 60000}
  message.sent:
    max_retries: 3
    retry_delay: 200
    backoff: exponential
    dead_letter_queue: message.sent.dlq
workers:
  heartbeat_interval: 0.2
  shutdown_timeout: 1
"""

#: Types a healthy deployment never produces; the test named checks their fields instead.
ELSEWHERE = {
    "redis.down": "test_redis_watchdog.py::test_embedded_redis_killed_under_load_comes_back_by_itself_and_loses_no_accepted_message",
    "redis.restarted": "test_redis_watchdog.py::test_embedded_redis_killed_under_load_comes_back_by_itself_and_loses_no_accepted_message",
}


@pytest.fixture
def seed(tmp_path, redis_url):
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    make_project(
        tmp_path,
        {"ticker_step.py": TICKER, "sleeper_step.py": SLEEPER, "prims_step.py": PRIMS, "prims_child_step.py": CHILD},
        CONFIG,
        redis_url=redis_url,
    )
    return tmp_path


def raw_stream(r: redis.Redis, key: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(key)]


def test_the_required_table_names_every_event_type():
    assert set(REQUIRED) == set(EVENT_TYPES)


def test_every_event_type_reaches_the_stream_with_the_fields_that_apply(seed, r, keys):
    """Given a real deployment, when it serves, fails, retries, dead-letters, replays, fires and skips cron ticks,
    reloads a broken step and stops, then every event type is on the stream with its fields, data is JSON,
    capped and redacted."""
    # The ticker last fired two minutes ago: the scheduler fires what is within the grace and reports the rest skipped.
    two_min_ago = (int(time.time()) - 120) // 2 * 2 * 1000
    r.set(
        keys.cron_last("Ticker", "*/2 * * * * *"),
        json.dumps({"scheduled_ms": two_min_ago, "fired_ms": two_min_ago, "expression": "*/2 * * * * *"}),
    )
    t0 = int(time.time() * 1000)
    app = start_cli(seed, "--no-ui", "--reload")
    try:
        ok = httpx.post(f"{app.url}/messages", json={"text": "x" * 10_000, "recipient": "a@example.com"})
        doomed = httpx.post(f"{app.url}/messages", json={"text": "doomed", "fail_times": 99})
        assert ok.status_code == doomed.status_code == 202
        events_once(r, keys, "message.dead_lettered", 1, timeout=30)
        res = subprocess.run(
            [sys.executable, "-m", "iii_console", "dlq", "replay", "--all", "--yes"],
            cwd=seed,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        events_once(r, keys, "message.replayed", 1)
        (seed / "steps" / "broken_step.py").write_text(
            "config = {'name': 'Broken', 'triggers': [{'type': 'cron', 'cron': '* * *'}]}\ndef handler(ctx): pass\n"
        )
        events_once(r, keys, "config.reloaded", 1, timeout=30)
        (seed / "steps" / "broken_step.py").unlink()
        events_once(r, keys, "config.reloaded", 2, timeout=30)
        events_once(r, keys, "worker.heartbeat", 1, timeout=30)  # one every ~10 s per worker
        events_once(r, keys, "notification.sent", 1)
        cli_send(seed, "prims", {})
        events_once(r, keys, "group.completed", 1, timeout=30)
        events_once(r, keys, "message.throttled", 1, timeout=30)
        # A handler still running when the stop's shutdown_timeout ends gives its message back.
        cli_send(seed, "slow", {})
        events_once(r, keys, "message.started", 1, where=lambda e: e.step == "Sleeper", timeout=30)
    finally:
        assert app.stop() == 0
    events_once(r, keys, "worker.stopped", 1)
    [back] = events_once(r, keys, "message.redelivered", 1)
    assert back.step == "Sleeper" and back.data["reason"] == "abandoned at shutdown" and back.data["deliveries"] == 1
    assert r.llen(f"{keys.dramatiq_namespace}:slow--Sleeper--normal") == 1  # back in its queue for the next start
    t1 = int(time.time() * 1000)

    raw = raw_stream(r, keys.events)
    seen = {e["type"] for e in raw}
    assert seen >= set(EVENT_TYPES) - set(ELSEWHERE), f"never produced: {set(EVENT_TYPES) - set(ELSEWHERE) - seen}"
    missing = {}
    for e in raw:
        lacking = {f for f in REQUIRED[e["type"]] if not e.get(f)}
        if lacking:
            missing.setdefault(e["type"], lacking)
        assert e["ts"].isdigit() and t0 - 1000 <= int(e["ts"]) <= t1 + 1000, e  # epoch milliseconds
        if "data" in e:
            assert len(e["data"].encode()) <= DATA_MAX_BYTES and json.loads(e["data"]) is not None
    assert not missing, missing

    evs = events(r, keys)
    assert "hunter2" not in json.dumps(raw)
    assert any(e.type == "log" and e.step == "Ticker" and e.data["password"] == REDACTED for e in evs)
    [big] = [e for e in evs if e.type == "http.received" and e.trace_id == ok.json()["trace_id"]]
    assert big.data["truncated"] is True and big.data["bytes"] > 10_000
    [skipped] = [e for e in evs if e.type == "cron.skipped"]
    assert skipped.data["count"] >= 25 and skipped.data["last_fired_ms"] == two_min_ago
    assert all(e.data["drift_ms"] >= 0 for e in evs if e.type == "cron.fired")
    [bad] = [e for e in evs if e.type == "step.error"]
    [failed_reload] = [e for e in evs if e.type == "config.reloaded" and not e.data["ok"]]
    assert "broken_step.py" in bad.data["file"] and bad.trace_id == failed_reload.trace_id  # a reload and its errors: one trace
    # A worker's start, heartbeats and stop share its process's trace.
    started = {(e.worker, e.trace_id) for e in evs if e.type == "worker.started"}
    assert {(e.worker, e.trace_id) for e in evs if e.type in ("worker.heartbeat", "worker.stopped")} <= started


def test_one_trace_follows_a_message_through_retries_state_and_the_state_step(seed, r, keys):
    """Given a message that fails twice then succeeds, when it has been notified, then every event about it —
    from http.received through the retries, its state changes and the state step's notification — has one trace id."""
    app = start_cli(seed, "--no-ui")
    try:
        resp = httpx.post(f"{app.url}/messages", json={"text": "flaky one", "fail_times": 2, "recipient": "f@example.com"})
        assert resp.status_code == 202
        mid, trace = resp.json()["id"], resp.json()["trace_id"]
        [note] = events_once(r, keys, "notification.sent", 1, timeout=30)
    finally:
        app.stop()
    evs = events(r, keys)

    def about(e: Event) -> bool:
        d = e.data if isinstance(e.data, dict) else {}
        payload = d.get("payload") if isinstance(d.get("payload"), dict) else {}
        return mid in (d.get("key"), d.get("message_id"), payload.get("id"), payload.get("key"), (d.get("body") or {}).get("id"))

    related = [e for e in evs if about(e) or e.trace_id == trace]
    assert {e.trace_id for e in related} == {trace}

    def chain(step: str, *skip: str) -> list[tuple[str, int | None]]:
        return [(e.type, e.attempt) for e in related if e.step == step and e.type not in ("state.changed", "log", *skip)]

    # Events of one thread reach the stream in order; across processes only their timestamps order them.
    assert chain("SendMessage") == [("http.received", None)]
    assert chain("ProcessMessage", "message.enqueued") == [
        ("message.started", 1),
        ("message.failed", 1),
        ("message.retrying", 2),
        ("message.started", 2),
        ("message.failed", 2),
        ("message.retrying", 3),
        ("message.started", 3),
        ("message.processed", 3),
    ]
    assert chain("ProcessMessage").count(("message.enqueued", None)) == 1
    assert sorted(chain("NotifyCompletion"), key=str) == sorted(
        [("message.enqueued", None), ("message.started", 1), ("notification.sent", None), ("message.processed", 1)], key=str
    )
    assert chain("NotifyCompletion", "message.enqueued") == [
        ("message.started", 1),
        ("notification.sent", None),
        ("message.processed", 1),
    ]
    statuses = [e.data["new"]["status"] for e in related if e.type == "state.changed"]
    assert statuses[0] == "queued" and statuses[-1] == "processed"
    assert {e.step for e in related if e.type == "state.changed"} == {"SendMessage", "ProcessMessage"}
    # A queue run's state changes name the delivery that made them, like its other events.
    runs = {e.message_id for e in related if e.type == "message.started" and e.step == "ProcessMessage"}
    assert {e.message_id for e in related if e.type == "state.changed" and e.step == "ProcessMessage"} == runs
    [received] = [e for e in related if e.type == "http.received"]
    assert {e.worker for e in related if e.type == "state.changed" and e.step == "SendMessage"} == {received.worker}
    assert note.trace_id == trace and note.data["message_id"] == mid
    [notify_run] = [e for e in related if e.type == "message.started" and e.step == "NotifyCompletion"]
    assert note.message_id == notify_run.message_id  # the run that sent it
    # The causal order holds on the clock too (one host stamps every event here).
    ts = {
        t: min(e.ts for e in related if e.type == t)
        for t in ("http.received", "message.started", "message.processed", "notification.sent")
    }
    assert ts["http.received"] <= ts["message.started"] <= ts["message.processed"] <= ts["notification.sent"]


HANDSHAKE = """
import os, time
from iii_console import Step, queue
config = Step(name="Chatty", triggers=[queue("chatty")])
def handler(data, ctx):
    open(data["started"], "w").close()
    while not os.path.exists(data["go"]):
        time.sleep(0.005)
    for i in range(data["n"]):
        ctx.logger.info("line", i=i)
        ctx.emit("notification.sent", data={"i": i})
    open(data["done"], "w").close()
"""


def test_a_handler_emits_thousands_of_events_while_redis_answers_nothing(tmp_path, redis_url, r, keys):
    """Given a real worker running a handler, when every Redis client is paused (CLIENT PAUSE ALL) and the handler then
    emits 4,000 events, then the handler finishes while Redis is still paused — emitting made no round trip — and
    every event reaches the stream once Redis answers again."""
    make_project(tmp_path, {"chatty_step.py": HANDSHAKE}, "workers:\n  heartbeat_timeout: 60\n", redis_url=redis_url)
    worker = start_cli(tmp_path, "--no-ui", "--role", "worker")
    files = {k: str(tmp_path / k) for k in ("started", "go", "done")}
    n = 2000
    try:
        wait_for(lambda: events(r, keys, "worker.started"), timeout=30, what="worker started")
        cli_send(tmp_path, "chatty", {**files, "n": n})
        wait_for(lambda: (tmp_path / "started").exists(), timeout=30, what="the handler to start")

        pauser = redis.Redis.from_url(redis_url)
        pauser.execute_command("CLIENT", "PAUSE", 8000, "ALL")
        answered = threading.Event()
        probe = redis.Redis.from_url(redis_url, socket_timeout=30)
        threading.Thread(target=lambda: (probe.ping(), answered.set()), daemon=True).start()
        (tmp_path / "go").touch()
        wait_for(lambda: (tmp_path / "done").exists(), timeout=7, interval=0.01, what="the handler to finish emitting")
        # The probe's PING is still unanswered: Redis was paused for the whole of the handler's emitting.
        assert not answered.is_set()
        assert answered.wait(30)
        lines = events_once(r, keys, "log", n, where=lambda e: e.step == "Chatty", timeout=30)
        notes = events_once(r, keys, "notification.sent", n, where=lambda e: e.step == "Chatty", timeout=30)
        assert [e.data["i"] for e in lines] == list(range(n)) and [e.data["i"] for e in notes] == list(range(n))
        assert len({e.trace_id for e in lines + notes}) == 1
        events_once(r, keys, "message.processed", 1, where=lambda e: e.step == "Chatty")
    finally:
        assert worker.stop() == 0


ORDERED = """
from iii_console import Step, queue
config = Step(name="Ordered", triggers=[queue("ordered")], enqueues=["ordered.next"])
def handler(data, ctx):
    k = data["k"]
    ctx.logger.info("before", k=k)
    ctx.state.set("ordered", k, {"n": 0})
    ctx.logger.info("between", k=k)
    ctx.state.update("ordered", k, [{"type": "increment", "path": "n"}])
    ctx.enqueue("ordered.next", {"k": k})
    ctx.state.update("ordered", k, [{"type": "increment", "path": "n"}])
    ctx.logger.info("after", k=k)
"""

ORDERED_ASYNC = """
import asyncio
from iii_console import Step, queue
config = Step(name="Ordered", triggers=[queue("ordered")], enqueues=["ordered.next"])
async def handler(data, ctx):
    k = data["k"]
    ctx.logger.info("before", k=k)
    await ctx.state.set("ordered", k, {"n": 0})
    ctx.logger.info("between", k=k)
    await asyncio.sleep(0)
    await ctx.state.update("ordered", k, [{"type": "increment", "path": "n"}])
    await ctx.enqueue("ordered.next", {"k": k})
    await ctx.state.update("ordered", k, [{"type": "increment", "path": "n"}])
    ctx.logger.info("after", k=k)
"""

ORDERED_NEXT = """
from iii_console import Step, queue
config = Step(name="OrderedNext", triggers=[queue("ordered.next")])
def handler(data, ctx):
    pass
"""


def _sid(e: Event) -> tuple[int, int]:
    ms, _, seq = e.id.partition("-")
    return int(ms), int(seq)


@pytest.mark.parametrize(
    ("kind", "broker"), [("def", "redis"), ("async def", "redis"), ("async def", "rabbitmq")], indirect=["broker"]
)
def test_a_runs_own_events_precede_the_state_changes_and_enqueues_it_writes_for_every_message(
    kind, broker, tmp_path, redis_url, r, keys, producer
):
    """Given a queue step that logs, sets a key, logs, updates it, enqueues and updates it again, on a worker of
    8 threads, when 150 messages run, then for every message the stream holds its events in the order the handler
    made them: message.started, the first log line, state.changed, the second, state.changed, the enqueue's
    message.enqueued, state.changed, the last log line and message.processed. A state write carries what its thread still buffered
    (before, the buffered start and log lines could land after the write's state.changed). An ``async def``
    handler's writes do not wait for the buffer (on the worker's event loop, that costs a round trip per run),
    so for it only its own events' order and its settle's place are checked: the settle follows the
    handler's last log line and its enqueue's message.enqueued (before, the worker thread that settles did not
    know what the handler's task had put, and on RabbitMQ what the publishing thread had)."""
    from iii_console.core.discovery import discover

    step = ORDERED if kind == "def" else ORDERED_ASYNC
    cfg = make_project(
        tmp_path, {"ordered_step.py": step, "next_step.py": ORDERED_NEXT}, "server:\n  port: 0\n" + broker, redis_url=redis_url
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "worker", "--threads", "8")
    try:
        wait_for(lambda: events(r, keys, "worker.started"), what="the worker consuming")
        p = producer(cfg, discover(cfg.steps_path))
        for i in range(150):
            p.enqueue("ordered", {"k": f"k{i}"}, trace_id=f"trace-{i}")
        wait_for(lambda: len(events(r, keys, "message.processed")) >= 300, timeout=60, what="150 runs and their next")
    finally:
        assert run.stop() == 0
    runs: dict[str, list[Event]] = {}
    for e in events(r, keys):
        if e.step == "Ordered" and e.message_id and e.type != "message.enqueued":
            runs.setdefault(e.message_id, []).append(e)
        elif e.type == "message.enqueued" and e.topic == "ordered.next":
            runs.setdefault(f"next:{e.trace_id}", []).append(e)
    by_trace = {evs[0].trace_id: mid for mid, evs in runs.items() if not mid.startswith("next:")}
    assert len(by_trace) == 150
    for trace, mid in by_trace.items():
        shape = [(e.type, (e.data or {}).get("message") if e.type == "log" else None) for e in runs[mid]]
        [nxt] = runs[f"next:{trace}"]
        if kind == "async def":
            assert [s for s in shape if s[0] != "state.changed"] == [
                ("message.started", None),
                ("log", "before"),
                ("log", "between"),
                ("log", "after"),
                ("message.processed", None),
            ], (trace, shape)
            assert shape.count(("state.changed", None)) == 3 and shape[-1] == ("message.processed", None), (trace, shape)
            assert _sid(nxt) < _sid(runs[mid][-1]), (trace, [e.id for e in runs[mid]], nxt.id)
            continue
        assert shape == [
            ("message.started", None),
            ("log", "before"),
            ("state.changed", None),
            ("log", "between"),
            ("state.changed", None),
            ("state.changed", None),
            ("log", "after"),
            ("message.processed", None),
        ], (trace, shape)
        # The enqueue's event sits between the second state change and the third.
        assert _sid(runs[mid][4]) < _sid(nxt) < _sid(runs[mid][5]), (trace, [e.id for e in runs[mid]], nxt.id)
