"""Documented guarantees under the stops, delays and data losses that used to break them:
graceful restarts are not deliveries, a handler still running at the stop's timeout gives
its message back, a draining worker is not swept, far-future delays cannot hold back due
messages, and state changes made right after Redis lost its data still fire."""

from __future__ import annotations

import json
import threading
import time

import pytest

from iii_console.core.dlq import DeadLetterStore

from ..helpers import events, events_once, ready, runs, wait_for

SLOW = """
import time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "Slow", [{"type": "increment", "path": data["k"]}])
    time.sleep(data.get("sleep", 0.3))
"""


def acks(r, keys) -> int:
    return sum(r.scard(k) for k in r.scan_iter(match=f"{keys.dramatiq_namespace}:__acks__.*"))


def test_graceful_restarts_never_count_as_deliveries(project, runtime, producer, r, keys):
    """Given max_deliveries 2, a message delayed 240 s, a retry waiting out a 120 s backoff, and messages waiting in a
    worker's prefetch behind a slow one, when the worker is stopped gracefully and started again 8 times, then nothing
    is dead-lettered, the delayed ones still wait for their time, and every other message runs exactly once."""
    cfg, steps = project(
        {
            "slow_step.py": SLOW,
            "flaky_step.py": """
from iii_console import Step, queue
config = Step(name="Flaky", triggers=[queue("flaky")])
def handler(data, ctx):
    raise RuntimeError("fails once, retried in 120 s")
""",
        },
        "queues:\n  jobs:\n    concurrency: 1\n    max_deliveries: 2\n"
        "  flaky:\n    max_retries: 1\n    retry_delay: 120000\n    max_deliveries: 2\n"
        "workers:\n  threads: 1\n",
    )
    p = producer(cfg, steps)
    p.enqueue("jobs", {"k": "later"}, trace_id="t-later", delay_ms=240_000)
    p.enqueue("flaky", {"k": "retry"}, trace_id="t-retry")
    for i in range(6):
        p.enqueue("jobs", {"k": f"m{i}", "sleep": 0.4}, trace_id=f"t{i}")
    for _ in range(8):
        rt = runtime(cfg, steps, threads=1)
        time.sleep(0.5)  # one handler runs; the next ones wait in the worker's prefetch
        rt.stop(timeout_s=10)
    store = DeadLetterStore(r, keys)
    assert store.count("dead-letters") == 0, [e.error for e in store.list("dead-letters")]
    ns = keys.dramatiq_namespace
    assert r.zcard(f"{ns}:jobs--Slow--normal.delayed") == 1 and r.zcard(f"{ns}:flaky--Flaky--normal.delayed") == 1
    runtime(cfg, steps, threads=1)
    wait_for(lambda: runs(r, keys, "Slow") == {f"m{i}": 1 for i in range(6)}, timeout=30, what="every waiting message, once")
    assert store.count("dead-letters") == 0


def test_a_handler_still_running_at_the_stops_timeout_gives_its_message_back(project, runtime, producer, r, keys, capfd):
    """Given a handler that outlasts shutdown_timeout, when its worker stops, then the stop says so, its message goes
    back to the head of its queue with a message.redelivered event, nothing stays in flight, and the next worker runs it."""
    cfg, steps = project({"slow_step.py": SLOW})
    rt = runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("jobs", {"k": "long", "sleep": 20}, trace_id="t-long")
    wait_for(lambda: runs(r, keys, "Slow").get("long") == 1, what="the handler to start")
    rt.stop(timeout_s=1)
    assert rt.abandoned == 1
    assert "1 handler(s) still running after shutdown_timeout" in capfd.readouterr().err
    ns = keys.dramatiq_namespace
    assert r.llen(f"{ns}:jobs--Slow--normal") == 1 and acks(r, keys) == 0
    [back] = events_once(r, keys, "message.redelivered", 1)
    assert (back.message_id, back.trace_id, back.data["reason"], back.data["deliveries"]) == (
        mid,
        "t-long",
        "abandoned at shutdown",
        1,
    )
    [stopped] = events_once(r, keys, "worker.stopped", 1)
    assert stopped.data["abandoned"] == 1
    # The next worker runs it (quickly this time: the sleep came from the data, so shorten it in place).
    body_key = f"{ns}:jobs--Slow--normal.msgs"
    [(rid, body)] = r.hgetall(body_key).items()
    r.hset(body_key, rid, body.replace(b'"sleep":20', b'"sleep":0'))
    runtime(cfg, steps)
    wait_for(lambda: runs(r, keys, "Slow").get("long") == 2, what="the message run again")
    events_once(r, keys, "message.processed", 1, where=lambda e: e.message_id == mid)


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_on_rabbitmq_a_handler_still_running_at_the_stops_timeout_is_returned_by_rabbitmq(
    project, runtime, producer, r, keys, rabbit_node
):
    """Given a handler that outlasts shutdown_timeout on RabbitMQ, when its worker stops, then the stop says so and
    closing its connection returns the unacked message to its quorum queue (RabbitMQ counts it a delivery); the
    next worker runs it again and it is processed."""
    cfg, steps = project({"slow_step.py": SLOW})
    rt = runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("jobs", {"k": "long", "sleep": 3}, trace_id="t-long")
    wait_for(lambda: runs(r, keys, "Slow").get("long") == 1, what="the handler to start")
    rt.stop(timeout_s=0.5)
    assert rt.abandoned == 0  # nothing for the worker to give back itself: RabbitMQ holds it
    [stopped] = events_once(r, keys, "worker.stopped", 1)
    assert stopped.data["abandoned"] == 0
    wait_for(lambda: ready(rabbit_node, f"{cfg.rabbitmq.prefix}.jobs--Slow--normal") == 1, what="the message back in its queue")
    runtime(cfg, steps)
    wait_for(lambda: runs(r, keys, "Slow").get("long") == 2, timeout=20, what="the message run again")
    events_once(r, keys, "message.processed", 1, where=lambda e: e.message_id == mid)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_draining_worker_keeps_heartbeating_and_is_not_swept(project, runtime, producer, r, keys):
    """Given a 1 s heartbeat timeout and a second worker sweeping every 0.2 s, when a worker running a 3 s handler is
    stopped, then it drains without being swept: the handler runs once and no 'heartbeat lost' is reported."""
    cfg, steps = project(
        {"slow_step.py": SLOW}, "workers:\n  heartbeat_interval: 0.2\n  heartbeat_timeout: 1.0\n  sweep_interval: 0.2\n"
    )
    draining = runtime(cfg, steps)
    producer(cfg, steps).enqueue("jobs", {"k": "long", "sleep": 3}, trace_id="t")
    wait_for(lambda: runs(r, keys, "Slow").get("long") == 1, what="the handler to start")
    runtime(cfg, steps)  # the sweeper, started after: the message is the draining worker's
    draining.stop(timeout_s=10)
    events_once(r, keys, "message.processed", 1)
    time.sleep(1.5)
    assert runs(r, keys, "Slow") == {"long": 1}
    assert not [e for e in events(r, keys, "worker.stopped") if e.data.get("reason") == "heartbeat lost"]
    assert not events(r, keys, "message.redelivered")


def test_far_future_delayed_messages_do_not_hold_back_due_ones(project, runtime, producer, r, keys):
    """Given 1,000 messages delayed 10 years and then one delayed 100 ms, on concurrency 1, then the 100 ms one runs
    promptly and no worker holds any of the far-future ones."""
    cfg, steps = project({"slow_step.py": SLOW}, "queues:\n  jobs:\n    concurrency: 1\n")
    runtime(cfg, steps)
    p = producer(cfg, steps)
    ten_years = 10 * 365 * 86_400_000
    for i in range(1000):
        p.enqueue("jobs", {"k": f"far{i}"}, trace_id="t", delay_ms=ten_years)
    p.enqueue("jobs", {"k": "soon", "sleep": 0}, trace_id="t", delay_ms=100)
    wait_for(lambda: runs(r, keys, "Slow").get("soon") == 1, timeout=10, what="the due message")
    assert acks(r, keys) == 0
    assert r.zcard(f"{keys.dramatiq_namespace}:jobs--Slow--normal.delayed") == 1000
    assert set(runs(r, keys, "Slow")) == {"soon"}


WATCHER = """
from iii_console import Step, state
config = Step(name="Watch", triggers=[state("jobs", "*")])
def handler(change, ctx):
    ctx.state.update("fired", "all", [{"type": "increment", "path": change.key}])
"""


def test_state_changes_right_after_redis_lost_its_data_still_fire(project, runtime, r, keys, redis_url):
    """Given a state step on jobs/*, when Redis loses all its data (FLUSHALL, as a restart without persistence does)
    while a writer changes jobs every 20 ms, then every change written after the loss fires its step exactly once,
    including those written before any process registered the watched groups again."""
    from iii_console.core.state import StateStore
    from iii_console.runtime.services import redis_client

    cfg, steps = project({"watch_step.py": WATCHER}, "workers:\n  sweep_interval: 0.5\n")
    runtime(cfg, steps)
    store = StateStore(redis_client(redis_url), keys)
    written: list[str] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            key = f"k{i}"
            store.set("jobs", key, {"n": i})
            written.append(key)
            i += 1
            time.sleep(0.02)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.5)
        r.flushall()
        cut = len(written)
        time.sleep(2.0)
    finally:
        stop.set()
        writer.join()
    after = written[cut + 1 :]  # the one racing the flush may have been written before it
    assert len(after) > 50

    def fired() -> dict[str, int]:
        return json.loads(r.hget(keys.state_group("fired"), "all") or "{}")

    wait_for(lambda: all(k in fired() for k in after), timeout=20, what="every change after the loss fired")
    assert all(fired()[k] == 1 for k in after), {k: fired()[k] for k in after if fired()[k] != 1}


def test_a_state_write_with_no_watched_set_records_its_change(r, keys, redis_url):
    """Given no watched-groups set at all (Redis lost it), when state is written, then the change is recorded for the
    dispatchers; once the set exists (always holding ""), only watched groups are recorded."""
    from iii_console.core.state import StateStore
    from iii_console.runtime.services import redis_client

    store = StateStore(redis_client(redis_url), keys)
    store.set("any", "k", 1)
    assert r.xlen(keys.state_changes) == 1
    r.sadd(keys.state_watched, "")
    store.set("any", "k", 2)
    assert r.xlen(keys.state_changes) == 1


def test_an_older_versions_delay_queue_is_moved_into_the_delayed_sets(project, runtime, r, keys):
    """Given a message an older version left in a `.DQ` delay queue (due in 300 ms), when a supervisor starts, then
    it is moved into its queue's delayed set and runs when due."""
    from dramatiq.message import Message

    from iii_console.adapters.queue.delays import migrate_legacy_delay_queues

    cfg, steps = project({"slow_step.py": SLOW})
    ns = keys.dramatiq_namespace
    rid = "legacy-1"
    eta = int(time.time() * 1000) + 300
    old = Message(
        queue_name="jobs--Slow--normal.DQ",
        actor_name="Slow:jobs:normal",
        args=({"k": "legacy", "sleep": 0},),
        kwargs={},
        options={"topic": "jobs", "trace_id": "t-legacy", "eta": eta, "redis_message_id": rid},
    )
    r.hset(f"{ns}:jobs--Slow--normal.DQ.msgs", rid, old.encode())
    r.rpush(f"{ns}:jobs--Slow--normal.DQ", rid)
    assert migrate_legacy_delay_queues(r, keys) == 1
    assert not r.exists(f"{ns}:jobs--Slow--normal.DQ") and r.zscore(f"{ns}:jobs--Slow--normal.delayed", rid) == eta
    runtime(cfg, steps)
    wait_for(lambda: runs(r, keys, "Slow").get("legacy") == 1, what="the legacy message, run when due")
