"""Worker processes replaced on purpose, with real processes: past
``max_messages_per_process``, past ``max_memory_mb`` (RSS), and when a handler is stuck
in a C call that ignores its time limit, or in one that holds the GIL (killed by its supervisor).
Nothing is lost, nothing runs twice (except the stuck message, which is redelivered and counted as
a delivery, and what a killed process held)."""

from __future__ import annotations

import json
import time

import pytest
import redis

from iii_console.adapters.queue.producer import subscriptions_for
from iii_console.core.discovery import discover
from iii_console.core.dlq import DeadLetterStore
from iii_console.core.keys import Keys
from iii_console.runtime.recycling import RECYCLE_EXIT, Recycler
from iii_console.runtime.runner import StepRunner
from iii_console.runtime.services import Services

from ..helpers import events, events_once, make_project, start_cli, wait_for

pytestmark = pytest.mark.slow

COUNTER = """
import os
from iii_console import Step, queue
config = Step(name="Count", triggers=[queue("jobs")])
KEEP = []
def handler(data, ctx):
    if data.get("mb"):
        KEEP.append(b"x" * (data["mb"] * 2**20))   # written, so resident: a leak
    ctx.state.update("runs", data["k"], [{"type": "increment", "path": "n"}, {"type": "set", "path": "pid", "value": os.getpid()}])
"""

BASE = """
server:
  port: 0
workers:
  processes: 1
  heartbeat_interval: 0.5
  heartbeat_timeout: 5
  sweep_interval: 0.5
"""


def _send(project, redis_url, topic, payloads):
    cfg = make_project(project, {}, (project / "iii-config.yaml").read_text(), redis_url=redis_url)
    steps = discover(cfg.steps_path)
    svc = Services.open(cfg, "test")
    try:
        prod = StepRunner(svc, subscriptions_for(steps.steps)).producer
        return [prod.enqueue(topic, p, trace_id="t")[0] for p in payloads]
    finally:
        svc.close()


def _runs(r, keys) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in r.hgetall(keys.state_group("runs")).items()}


def _recycled(r, keys, cause):
    return [e for e in events(r, keys, "worker.stopped") if e.data.get("reason") == "recycled" and e.data.get("cause") == cause]


def test_a_worker_is_replaced_after_max_messages_per_process_and_every_message_runs_once(tmp_path, redis_url, r, keys):
    make_project(
        tmp_path, {"count_step.py": COUNTER}, BASE + "  threads: 2\n  max_messages_per_process: 5\n", redis_url=redis_url
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        _send(tmp_path, redis_url, "jobs", [{"k": f"m{i}"} for i in range(24)])
        wait_for(lambda: len(_runs(r, keys)) == 24, timeout=90, what="every message to run")
        runs = _runs(r, keys)
        assert all(v["n"] == 1 for v in runs.values()), runs  # nothing ran twice
        recycled = _recycled(r, keys, "max_messages_per_process")
        assert len(recycled) >= 3, [e.data for e in events(r, keys, "worker.stopped")]
        # Each process settles its five, plus at most what its other thread was running.
        assert all(5 <= e.data["messages"] <= 6 for e in recycled), [e.data["messages"] for e in recycled]
        assert "max_messages_per_process: 5" in recycled[0].data["detail"]
        assert len({v["pid"] for v in runs.values()}) >= 4
        assert not [e for e in events(r, keys, "log") if e.data.get("level") == "error"]  # a replacement is no crash
    finally:
        assert run.stop() == 0


def test_a_leaking_worker_is_replaced_at_max_memory_mb_with_nothing_lost(tmp_path, redis_url, r, keys):
    make_project(tmp_path, {"count_step.py": COUNTER}, BASE + "  threads: 1\n  max_memory_mb: 250\n", redis_url=redis_url)
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        _send(tmp_path, redis_url, "jobs", [{"k": f"m{i}", "mb": 50} for i in range(12)])
        wait_for(lambda: len(_runs(r, keys)) == 12, timeout=120, what="every leaking message to run")
        runs = _runs(r, keys)
        assert all(v["n"] == 1 for v in runs.values()), runs
        recycled = _recycled(r, keys, "max_memory_mb")
        assert recycled, [e.data for e in events(r, keys, "worker.stopped")]
        assert all(e.data["rss_mb"] > 250 for e in recycled)
        # A process starts well below the limit, so each one took several 50 MB messages.
        assert all(2 <= e.data["messages"] <= 5 for e in recycled), [e.data for e in recycled]
        print(
            f"\nrecycled at RSS {[e.data['rss_mb'] for e in recycled]} MiB after {[e.data['messages'] for e in recycled]} messages"
        )
    finally:
        assert run.stop() == 0


STUCK = """
import socket, threading, time
from iii_console import Step, queue
config = Step(name="Stuck", triggers=[queue("jobs")])
KEEP = []
def handler(data, ctx):
    ctx.state.update("runs", data["k"], [{"type": "increment", "path": "n"}])
    if data["k"] == "stuck":            # blocked in C: the asynchronous exception never lands
        {block}
    ctx.state.set("done", data["k"], True)
"""
BLOCKS = {
    "lock-wait": "threading.Event().wait()",
    "socket-read": "KEEP.append(socket.socketpair()); KEEP[-1][0].recv(1)",  # a read without a timeout
}


def _run_stuck(project, redis_url, block: str, base: str = BASE):
    """A worker (2 threads) of ``STUCK`` whose stuck message blocks in ``block``: 500 ms limit, 2 deliveries, a DLQ."""
    config = (
        base + "  threads: 2\nqueues:\n  jobs:\n    time_limit_ms: 500\n    max_deliveries: 2\n    dead_letter_queue: jobs.dlq\n"
    )
    make_project(project, {"stuck_step.py": STUCK.replace("{block}", block)}, config, redis_url=redis_url)
    return start_cli(project, "--no-ui", "--role", "worker")


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_a_handler_stuck_in_a_c_call_does_not_hold_the_queue_its_process_is_recycled_and_the_message_redelivered(
    tmp_path, redis_url, r, keys, block
):
    run = _run_stuck(tmp_path, redis_url, BLOCKS[block])
    try:
        [stuck] = _send(tmp_path, redis_url, "jobs", [{"k": "stuck"}])
        wait_for(lambda: r.hexists(keys.state_group("runs"), "stuck"), what="the stuck handler to start")
        t0 = time.monotonic()
        quick = _send(tmp_path, redis_url, "jobs", [{"k": f"q{i}"} for i in range(10)])
        wait_for(lambda: r.hlen(keys.state_group("done")) == 10, timeout=60, what="the other messages to run")
        print(f"\n10 messages sent behind a stuck handler done in {time.monotonic() - t0:.1f} s")
        store = DeadLetterStore(r, keys)
        wait_for(lambda: store.count("jobs.dlq") == 1, timeout=60, what="the always-stuck message dead-lettered")
        [entry] = store.list("jobs.dlq")
        assert entry.message_id == stuck and "delivered 3 times" in entry.error
        # Two deliveries, each recycled its process; the third was dead-lettered unrun.
        assert json.loads(r.hget(keys.state_group("runs"), "stuck"))["n"] == 2
        recycled = _recycled(r, keys, "time_limit")
        assert len(recycled) == 2 and stuck in recycled[0].data["detail"]
        failed = events_once(r, keys, "message.failed", 2, where=lambda e: e.message_id == stuck)
        assert all(
            e.error.startswith("TimeLimitExceeded: handler ran past queues.jobs.time_limit_ms (500 ms) and did not stop")
            and e.data["stuck"]
            for e in failed
        )
        assert [e.attempt for e in failed] == [1, 1] and all(e.trace_id == "t" and e.duration_ms >= 2400 for e in failed)
        runs = _runs(r, keys)
        assert all(runs[f"q{i}"]["n"] == 1 for i in range(10))  # the rest ran once each
        assert {e.message_id for e in events(r, keys, "message.processed")} == set(quick)
    finally:
        assert run.stop() == 0


def test_the_recycler_asks_once_with_the_first_cause_and_says_why():
    rss = [100 * 2**20]
    rec = Recycler(max_messages=3, max_memory_mb=150, rss=lambda: rss[0], clock=iter(range(0, 1000)).__next__)
    rec.after_process_message(None, None)
    assert not rec.requested.is_set() and rec.stop_data() == {"reason": "shutdown"} and rec.exit_code == 0
    rss[0] = 200 * 2**20
    rec.after_process_message(None, None)
    assert rec.requested.is_set() and rec.cause == "max_memory_mb" and rec.exit_code == RECYCLE_EXIT
    rec.after_process_message(None, None)  # the third message: the first cause stays
    data = rec.stop_data()
    assert data["reason"] == "recycled" and data["cause"] == "max_memory_mb" and data["messages"] == 3
    assert data["detail"] == "resident memory 200 MiB after 2 messages (workers.max_memory_mb: 150)"


def test_a_handler_that_holds_the_gil_for_good_is_killed_by_its_supervisor_and_the_queue_goes_on(tmp_path, redis_url, r, keys):
    """Given a handler stuck in a regular expression that never gives up the GIL (its worker's heartbeat and time-limit
    threads frozen with it), when it runs, then the supervisor kills the process once its heartbeat has stood still
    past `heartbeat_timeout`, starts another, the other messages run, and the message that freezes every worker is
    dead-lettered after `max_deliveries`, instead of the queue stopping for good."""
    run = _run_stuck(
        tmp_path,
        redis_url,
        "import re; re.match(r'(a+)+$', 'a' * 40 + 'b')",
        BASE.replace("heartbeat_timeout: 5", "heartbeat_timeout: 2"),
    )
    try:
        [stuck] = _send(tmp_path, redis_url, "jobs", [{"k": "stuck"}])
        wait_for(lambda: r.hexists(keys.state_group("runs"), "stuck"), what="the stuck handler to start")
        _send(tmp_path, redis_url, "jobs", [{"k": f"q{i}"} for i in range(10)])
        wait_for(lambda: r.hlen(keys.state_group("done")) == 10, timeout=90, what="the other messages to run")
        store = DeadLetterStore(r, keys)
        wait_for(lambda: store.count("jobs.dlq") == 1, timeout=90, what="the message that freezes its worker dead-lettered")
        assert store.list("jobs.dlq")[0].message_id == stuck
        killed = [e for e in events(r, keys, "log") if "has not heartbeaten for over 2 s" in str(e.data.get("message"))]
        assert len(killed) >= 1, [e.data for e in events(r, keys, "log")]
        # Each ran; one the frozen process held beside the stuck handler (it could not settle) runs again, as after a crash.
        assert all(_runs(r, keys)[f"q{i}"]["n"] >= 1 for i in range(10))
        assert sum(_runs(r, keys)[f"q{i}"]["n"] for i in range(10)) <= 12
    finally:
        run.stop()


def test_a_redis_paused_past_heartbeat_timeout_does_not_get_healthy_workers_killed(tmp_path):
    """Given workers whose supervisor watches their heartbeats, when Redis itself is paused (SIGSTOP) longer than
    `heartbeat_timeout` + 2 s and resumed, then no worker process is killed for the heartbeats it could not write:
    their stillness counts only while Redis answers."""
    import os
    import signal

    from iii_console.core.redis_server import RedisServer

    from ..helpers import pid_alive, worker_pids

    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    client = redis.Redis.from_url(server.url)
    make_project(
        tmp_path, {"count_step.py": COUNTER}, BASE.replace("heartbeat_timeout: 5", "heartbeat_timeout: 2"), redis_url=server.url
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    keys = Keys()
    try:
        wait_for(lambda: len(worker_pids(client, keys)) == 1, timeout=30, what="the worker up")
        [pid] = worker_pids(client, keys)
        time.sleep(3)  # the supervisor's watch has seen its heartbeat move
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(6)
        os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(6)
        assert pid_alive(pid)
        assert not [e for e in events(client, keys, "log") if "has not heartbeaten" in str(e.data.get("message"))]
    finally:
        run.stop()
        client.close()
        server.stop()


PAUSED = """
import os, time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("slow")])
def handler(data, ctx):
    ctx.state.update("runs", data["k"], [{"type": "increment", "path": "n"}])
    time.sleep(4)
"""


def test_a_redis_paused_past_heartbeat_timeout_does_not_make_live_workers_sweep_each_other(tmp_path):
    """Given two worker processes running 4 s handlers, when Redis itself is paused (SIGSTOP) for 5 s, past
    `heartbeat_timeout` (2 s), and resumed, then no live worker is swept as dead: each message runs once, and no
    `worker.stopped` says "heartbeat lost" (the time Redis did not answer counts against no heartbeat)."""
    import os
    import signal

    from iii_console.core.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    client = redis.Redis.from_url(server.url)
    make_project(
        tmp_path,
        {"slow_step.py": PAUSED},
        BASE.replace("processes: 1", "processes: 2").replace("heartbeat_timeout: 5", "heartbeat_timeout: 2") + "  threads: 2\n",
        redis_url=server.url,
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    keys = Keys()
    try:
        wait_for(lambda: client.zcard(keys.worker_heartbeats) == 2, timeout=30, what="both workers up")
        _send(tmp_path, server.url, "slow", [{"k": f"m{i}"} for i in range(4)])
        wait_for(lambda: client.hlen(keys.state_group("runs")) == 4, timeout=20, what="the four handlers running")
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(5)
        os.kill(server.proc.pid, signal.SIGCONT)
        processed = lambda: [e for e in events(client, keys, "message.processed")]  # noqa: E731
        wait_for(lambda: len(processed()) >= 4, timeout=30, what="the four processed")
        time.sleep(3)
        assert {k: v["n"] for k, v in _runs(client, keys).items()} == {f"m{i}": 1 for i in range(4)}
        assert not [e for e in events(client, keys, "worker.stopped") if (e.data or {}).get("reason") == "heartbeat lost"]
        assert not events(client, keys, "message.redelivered")
    finally:
        run.stop()
        client.close()
        server.stop()
