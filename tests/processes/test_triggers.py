"""State triggers and crash recovery with real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from iii_console.core.state import StateStore
from iii_console.runtime.worker import TRIGGER_GROUP, trim_dispatched_changes, watch_state_triggers

from ..helpers import events, events_once, ready, wait_for

WATCHER = """
from iii_console import Step, state
def done(change):
    return (change.new or {}).get("status") == "done" and (change.old or {}).get("status") != "done"
config = Step(name="Watcher", triggers=[state("jobs", "job-*", condition=done)])
def handler(change, ctx):
    ctx.state.update("seen", "Watcher", [{"type": "increment", "path": change.key}])
    ctx.emit("notification.sent", data={"key": change.key})
"""

FAST = """
workers:
  heartbeat_interval: 0.2
  heartbeat_timeout: 1.0
  sweep_interval: 0.2
"""


def seen(r, keys):
    raw = r.hget(keys.state_group("seen"), "Watcher")
    return json.loads(raw) if raw else {}


def test_state_trigger_fires_once_per_matching_change(project, runtime, r, keys):
    cfg, steps = project({"watcher_step.py": WATCHER}, FAST)
    runtime(cfg, steps)
    s = StateStore(r, keys).bind(trace_id="trace-1")
    s.set("jobs", "job-1", {"status": "new"})
    s.update("jobs", "job-1", [{"type": "set", "path": "status", "value": "done"}])
    s.update("jobs", "job-1", [{"type": "set", "path": "note", "value": "still done"}])  # condition false
    s.set("jobs", "other", {"status": "done"})  # key pattern does not match
    s.set("elsewhere", "job-2", {"status": "done"})  # group does not match
    wait_for(lambda: seen(r, keys) == {"job-1": 1}, what="one trigger run")
    time.sleep(0.5)
    assert seen(r, keys) == {"job-1": 1}
    [note] = wait_for(lambda: events(r, keys, "notification.sent"), what="notification event")
    assert note.trace_id == "trace-1" and note.step == "Watcher"


def test_change_made_while_no_worker_runs_fires_when_one_starts(project, runtime, r, keys):
    cfg, steps = project({"watcher_step.py": WATCHER}, FAST)
    watch_state_triggers(r, keys, steps)  # what the supervisor does at start
    StateStore(r, keys).set("jobs", "job-9", {"status": "done"})
    runtime(cfg, steps)
    wait_for(lambda: seen(r, keys) == {"job-9": 1}, what="trigger after start")


def test_state_triggers_resume_after_redis_loses_its_data(project, runtime, r, keys):
    """Given a running worker with a state step, when Redis loses everything (a restart without persistence, a
    flush), then the worker registers its watched group and consumer group again, and a later change fires."""
    cfg, steps = project({"watcher_step.py": WATCHER}, FAST)
    runtime(cfg, steps)
    StateStore(r, keys).set("jobs", "job-1", {"status": "done"})
    wait_for(lambda: seen(r, keys) == {"job-1": 1}, what="the trigger before the loss")
    r.flushall()
    wait_for(lambda: r.sismember(keys.state_watched, "jobs"), timeout=10, what="the watched group registered again")
    StateStore(r, keys).set("jobs", "job-2", {"status": "done"})
    wait_for(lambda: seen(r, keys) == {"job-2": 1}, timeout=10, what="the trigger after the loss")


def test_change_read_by_a_dispatcher_that_died_is_claimed_and_fires_once(project, runtime, r, keys):
    cfg, steps = project({"watcher_step.py": WATCHER}, FAST)
    watch_state_triggers(r, keys, steps)
    StateStore(r, keys).set("jobs", "job-7", {"status": "done"})
    # A dispatcher reads the change and dies before acting on it.
    got = r.xreadgroup(TRIGGER_GROUP, "ghost-worker", {keys.state_changes: ">"}, count=10)
    assert got and got[0][1]
    runtime(cfg, steps)
    wait_for(lambda: seen(r, keys) == {"job-7": 1}, timeout=10, what="claimed change fires")
    time.sleep(1.5)  # a later sweep must not fire it again
    assert seen(r, keys) == {"job-7": 1}


SLOW = """
import time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("seen", "starts", [{"type": "increment", "path": data["k"]}])
    time.sleep(data.get("sleep", 0))
    ctx.state.update("seen", "done", [{"type": "increment", "path": data["k"]}])
"""


def _spawn_worker(cfg, index: int) -> subprocess.Popen:
    env = dict(os.environ, III_CONFIG_JSON=cfg.model_dump_json(), III_WORKER_INDEX=str(index), III_WORKER_THREADS="2")
    return subprocess.Popen([sys.executable, "-m", "iii_console.runtime.worker"], env=env, cwd=cfg.project_dir)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_killed_workers_in_flight_message_is_redelivered_within_the_heartbeat_bound(project, producer, r, keys, broker):
    """Given a worker (no supervisor) running a 30 s handler, when it is SIGKILLed, then a second worker runs the message
    again: on Redis after the sweep finds its heartbeat lost, on RabbitMQ as soon as the node sees its connection drop."""
    cfg, steps = project({"slow_step.py": SLOW}, FAST)
    w1 = _spawn_worker(cfg, 0)
    w2 = None
    try:
        wait_for(lambda: r.hlen(keys.workers) == 1, what="worker 1 registered")
        producer(cfg, steps).enqueue("jobs", {"k": "m1", "sleep": 30}, trace_id="t")
        starts = lambda: json.loads(r.hget(keys.state_group("seen"), "starts") or "{}")  # noqa: E731
        wait_for(lambda: starts().get("m1") == 1, what="message started on worker 1")
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        killed_at = time.monotonic()
        w2 = _spawn_worker(cfg, 1)
        # heartbeat_timeout 1.0 + sweep_interval 0.2 + 2 s, plus the new process's start-up
        wait_for(lambda: starts().get("m1") == 2, timeout=15, what="redelivery to worker 2")
        assert time.monotonic() - killed_at < 1.0 + 0.2 + 2 + 8
        # The sweep's worker.stopped goes through the batching sink: it can land after the redelivery.
        stopped = events_once(r, keys, "worker.stopped", 1, where=lambda e: e.data.get("reason") == "heartbeat lost")
        assert stopped[0].data["requeued"] == (0 if broker else 1)  # on RabbitMQ the node returned it, not the sweep
    finally:
        for p in (w1, w2):
            if p and p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_sigterm_drains_in_flight_work_and_requeues_the_rest(project, producer, r, keys, broker, request):
    """Given 10 messages of 0.5 s, when their worker gets SIGTERM mid-run, then it exits 0, every handler that started
    finished, each ran once, and the rest waits in the queue (on RabbitMQ: ready in its quorum queue)."""
    cfg, steps = project({"slow_step.py": SLOW}, FAST)
    w = _spawn_worker(cfg, 0)
    try:
        wait_for(lambda: r.hlen(keys.workers) == 1, what="worker registered")
        p = producer(cfg, steps)
        for i in range(10):
            p.enqueue("jobs", {"k": f"m{i}", "sleep": 0.5}, trace_id="t")
        wait_for(lambda: r.hget(keys.state_group("seen"), "starts"), what="work started")
        w.send_signal(signal.SIGTERM)
        assert w.wait(30) == 0
        starts = json.loads(r.hget(keys.state_group("seen"), "starts") or "{}")
        done = json.loads(r.hget(keys.state_group("seen"), "done") or "{}")
        assert starts == done  # everything that started finished: nothing cut off mid-run
        assert set(starts.values()) == {1}
        if broker:
            node = request.getfixturevalue("rabbit_node")
            left = sum(ready(node, f"{cfg.rabbitmq.prefix}.jobs--Slow--{prio}") for prio in ("high", "normal", "low"))
        else:
            left = sum(
                r.llen(k)
                for k in r.scan_iter(match=f"{keys.dramatiq_namespace}:jobs--Slow--*")
                if r.type(k) == b"list" and not k.endswith(b".wake")
            )
        assert len(done) + left == 10  # the rest is back in the queue, not lost
    finally:
        if w.poll() is None:
            w.kill()


KILLER = """
import os, signal
from iii_console import Step, queue
config = Step(name="Killer", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("seen", "starts", [{"type": "increment", "path": data["k"]}])
    if data.get("poison"):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_message_that_kills_its_worker_is_dead_lettered_after_bounded_deliveries(project, producer, r, keys):
    from iii_console.core.dlq import DeadLetterStore

    cfg, steps = project(
        {"killer_step.py": KILLER}, FAST + "queues:\n  jobs:\n    max_deliveries: 3\n    dead_letter_queue: jobs.dlq\n"
    )
    p = producer(cfg, steps)
    p.enqueue("jobs", {"k": "poison", "poison": True}, trace_id="tp")
    procs = []
    store = DeadLetterStore(r, keys)
    try:
        deadline = time.monotonic() + 60
        while store.count("jobs.dlq") == 0:  # a supervisor's restart loop, in small
            assert time.monotonic() < deadline, "poison message never dead-lettered"
            if not procs or procs[-1].poll() is not None:
                procs.append(_spawn_worker(cfg, len(procs)))
            time.sleep(0.1)
        p.enqueue("jobs", {"k": "fine"}, trace_id="tf")
        if procs[-1].poll() is not None:
            procs.append(_spawn_worker(cfg, len(procs)))
        starts = lambda: json.loads(r.hget(keys.state_group("seen"), "starts") or "{}")  # noqa: E731
        wait_for(lambda: starts().get("fine") == 1, timeout=20, what="the queue flows on")
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
    assert starts()["poison"] == 3  # ran on each of its 3 deliveries, never a 4th time
    [entry] = store.list("jobs.dlq")
    assert "delivered 4 times without finishing" in entry.error and entry.trace_id == "tp" and entry.data["k"] == "poison"
    [dead] = events_once(r, keys, "message.dead_lettered", 1)
    assert dead.data == {"dlq": "jobs.dlq", "attempts": 1, "deliveries": 4}
    assert (dead.message_id, dead.trace_id, dead.step, dead.error) == (entry.message_id, "tp", "Killer", entry.error)


COUNTER = """
from iii_console import Step, state
config = Step(name="Counter", triggers=[state("w")])
def handler(change, ctx):
    ctx.state.update("seen", "Counter", [{"type": "increment", "path": change.key}])
"""


def counted(r, keys) -> dict[str, int]:
    raw = r.hget(keys.state_group("seen"), "Counter")
    return json.loads(raw) if raw else {}


WRITER = """
import sys, redis
from iii_console.core.keys import Keys
from iii_console.core.state import StateStore
s = StateStore(redis.Redis.from_url(sys.argv[1]), Keys())
i = 0
while True:
    s.set("w", f"k{i}", {"i": i})
    i += 1
"""


def test_a_writer_killed_mid_stream_leaves_no_change_without_its_trigger(project, runtime, r, keys, redis_url):
    """A process writing state as fast as it can is SIGKILLed at an arbitrary
    moment (between two writes or inside one). Every change that is in the
    store fires its state step exactly once; none fires that is not there."""
    cfg, steps = project({"counter_step.py": COUNTER}, FAST)
    watch_state_triggers(r, keys, steps)  # what the supervisor does at start
    runtime(cfg, steps)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, redis_url])
    try:
        wait_for(lambda: r.hlen(keys.state_group("w")) >= 300, what="the writer writing")
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(10) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
    written = {k.decode() for k in r.hkeys(keys.state_group("w"))}
    wait_for(lambda: set(counted(r, keys)) == written, timeout=30, what="every written change's trigger")
    time.sleep(0.5)  # a late duplicate would show up now
    assert counted(r, keys) == {k: 1 for k in written}


KILLED_AFTER_WRITE = """
import os, signal
from iii_console import Step, queue
config = Step(name="Writer", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.set("w", data["k"], {"status": "done"})
    if os.environ.get("KILL_AFTER_STATE_WRITE"):
        os.kill(os.getpid(), signal.SIGKILL)  # dies the instant the change is made
"""


def test_a_worker_killed_right_after_its_state_write_still_fires_the_trigger_once(project, producer, r, keys):
    """The handler's process is SIGKILLed on the line after its state write: it
    can do nothing more (no dispatch, no ack). Another worker picks up both the
    trigger and the message; the rerun's identical write is no new change, so
    the state step runs exactly once."""
    cfg, steps = project({"writer_step.py": KILLED_AFTER_WRITE, "counter_step.py": COUNTER}, FAST)
    watch_state_triggers(r, keys, steps)
    victim = subprocess.Popen(
        [sys.executable, "-m", "iii_console.runtime.worker"],
        cwd=cfg.project_dir,
        env=dict(os.environ, III_CONFIG_JSON=cfg.model_dump_json(), III_WORKER_THREADS="2", KILL_AFTER_STATE_WRITE="1"),
    )
    survivor = None
    try:
        wait_for(lambda: r.hlen(keys.workers) == 1, what="the victim registered")
        producer(cfg, steps).enqueue("jobs", {"k": "k1"}, trace_id="t-kill")
        assert victim.wait(30) == -signal.SIGKILL
        assert StateStore(r, keys).get("w", "k1") == {"status": "done"}  # the change was made before the kill
        survivor = _spawn_worker(cfg, 1)
        wait_for(lambda: counted(r, keys) == {"k1": 1}, timeout=30, what="the trigger fired by the survivor")
        wait_for(
            lambda: [e for e in events(r, keys, "message.processed") if e.step == "Writer"],
            timeout=30,
            what="the killed message rerun by the survivor",
        )
        time.sleep(1.0)
        assert counted(r, keys) == {"k1": 1}
        changes = [e for e in events(r, keys, "state.changed") if e.data["group"] == "w"]
        assert len(changes) == 1 and changes[0].trace_id == "t-kill"
    finally:
        for p in (victim, survivor):
            if p and p.poll() is None:
                p.kill()
                p.wait()


def test_trigger_records_are_dropped_once_dispatched_and_kept_until_then(project, runtime, r, keys):
    """Each record carries the whole old and new value; once dispatched it goes,
    so large values do not pile up in Redis to the stream's cap. Records not yet
    read, or read by a dispatcher that died, stay until they are dispatched."""
    cfg, steps = project({"counter_step.py": COUNTER}, FAST)
    watch_state_triggers(r, keys, steps)
    s = StateStore(r, keys)
    for i in range(40):
        s.set("w", f"k{i % 4}", {"blob": "x" * 200_000, "i": i})
    r.xreadgroup(TRIGGER_GROUP, "ghost-worker", {keys.state_changes: ">"}, count=5)  # read, never acknowledged
    trim_dispatched_changes(r, keys.state_changes)
    assert r.xlen(keys.state_changes) == 40
    runtime(cfg, steps)
    wait_for(lambda: sum(counted(r, keys).values()) == 40, timeout=30, what="all 40 changes dispatched")
    wait_for(lambda: r.xlen(keys.state_changes) <= 1, timeout=10, what="the dispatched records trimmed")


RETRY_ONCE = """
from iii_console import Step, queue
config = Step(name="RetryOnce", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("seen", "attempts", [{"type": "increment", "path": str(ctx.attempt)}])
    if ctx.attempt == 1:
        raise ValueError("first attempt fails")
"""


def test_a_stalled_worker_that_scheduled_a_retry_does_not_run_it_again_on_waking(project, producer, r, keys):
    """A worker schedules a retry and is stopped (SIGSTOP: a long GC pause, a frozen
    VM) while it waits. The retry waits in Redis, not in the worker, so another
    worker runs it when due; when the stalled worker wakes it holds no copy of its
    own, and the retry has run once."""
    cfg, steps = project({"retry_once_step.py": RETRY_ONCE}, FAST + "queues:\n  jobs:\n    retry_delay: 3000\n")
    attempts = lambda: json.loads(r.hget(keys.state_group("seen"), "attempts") or "{}")  # noqa: E731
    ns = keys.dramatiq_namespace
    stalled = _spawn_worker(cfg, 0)
    other = None
    try:
        wait_for(lambda: r.hlen(keys.workers) == 1, what="the first worker registered")
        producer(cfg, steps).enqueue("jobs", {"k": "m1"}, trace_id="t")
        # The retry waits in Redis for its due time, held by no worker.
        wait_for(
            lambda: attempts() == {"1": 1} and any(r.zcard(k) for k in r.scan_iter(match=f"{ns}:*.delayed")),
            what="the retry waiting in its queue's delayed set",
        )
        assert not any(r.scard(k) for k in r.scan_iter(match=f"{ns}:__acks__.*"))
        stalled.send_signal(signal.SIGSTOP)
        other = _spawn_worker(cfg, 1)
        wait_for(lambda: attempts().get("2") == 1, timeout=20, what="the retry run by the other worker")
        stalled.send_signal(signal.SIGCONT)
        wait_for(lambda: r.hlen(keys.workers) == 2, timeout=10, what="the stalled worker heartbeating again")
        time.sleep(1.5)  # its delay-queue thread has woken and handled its (past-due) copy by now
        assert attempts() == {"1": 1, "2": 1}
    finally:
        for p in (stalled, other):
            if p and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
