"""Per-key throttling, cluster-wide: two real worker processes, real Redis; the limits are
checked from the handlers' own timestamps, and an over-limit message waits without
spending an attempt."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from iii_console.adapters.queue.producer import subscriptions_for
from iii_console.adapters.queue.throttle import key_value
from iii_console.core.config import load_config
from iii_console.core.discovery import discover
from iii_console.core.dlq import DeadLetterStore
from iii_console.runtime.runner import StepRunner
from iii_console.runtime.services import Services

from ..helpers import events, make_project, start_cli, wait_for, worker_pids

pytestmark = pytest.mark.slow

STEPS = {
    "call_step.py": """
        import json, os, time
        import redis
        from iii_console import Step, queue
        config = Step(name="CallApi", triggers=[queue("calls")])
        r = redis.Redis.from_url(os.environ["REDIS_URL"])
        def handler(data, ctx):
            r.rpush("test:starts:" + data["customer"]["id"], json.dumps([time.time() * 1000, ctx.attempt]))
    """,
    "export_step.py": """
        import json, os, time
        import redis
        from iii_console import Step, queue
        config = Step(name="Export", triggers=[queue("exports")])
        r = redis.Redis.from_url(os.environ["REDIS_URL"])
        def handler(data, ctx):
            t0 = time.time() * 1000
            time.sleep(0.15)
            r.rpush("test:runs:" + data["tenant"], json.dumps([t0, time.time() * 1000]))
    """,
    "late_step.py": """
        import json, os, time
        import redis
        from pydantic import BaseModel, field_validator
        from iii_console import Step, queue

        class Late(BaseModel):
            k: str
            slow_ms: int = 0
            pause_redis_ms: int = 0

            @field_validator("slow_ms")
            @classmethod
            def take_time(cls, v):
                time.sleep(v / 1000)  # an input check that takes a while, after the throttle let the message in
                return v

            @field_validator("pause_redis_ms")
            @classmethod
            def pause_redis(cls, v):
                if v:  # Redis stops answering every client (the start hook's call included) for a while
                    redis.Redis.from_url(os.environ["REDIS_URL"]).execute_command("CLIENT", "PAUSE", v, "ALL")
                    time.sleep(0.02)  # and the handler starts late enough for the start hook to ask Redis
                return v

        config = Step(name="Late", triggers=[queue("late", input=Late)])
        r = redis.Redis.from_url(os.environ["REDIS_URL"])
        def handler(data, ctx):
            r.rpush("test:late-starts", json.dumps(time.time() * 1000))
    """,
}

CONFIG = """
server:
  port: 0
queues:
  calls:
    throttle: {key: customer.id, limit: 3, period_ms: 600}
    max_retries: 0
    dead_letter_queue: calls.dlq
  exports:
    throttle: {key: tenant}
    concurrency_per_key: 2
  late:
    throttle: {key: k, limit: 3, period_ms: 600}
    time_limit_ms: 1000
workers:
  heartbeat_interval: 0.3
  heartbeat_timeout: 3
"""


@pytest.fixture
def cluster(tmp_path, redis_url, r, monkeypatch):
    make_project(tmp_path, {n: textwrap.dedent(s) for n, s in STEPS.items()}, CONFIG, redis_url=redis_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    run = start_cli(tmp_path, "--no-ui", "--role", "worker", "--processes", "2", "--threads", "8")
    cfg = load_config(tmp_path / "iii-config.yaml")
    svc = Services.open(cfg, "test")
    yield run, StepRunner(svc, subscriptions_for(discover(cfg.steps_path).steps)).producer
    svc.close()
    assert run.stop() == 0


@pytest.fixture
def admissions(redis_url):
    """The rate-limit admissions as Redis makes them: every ``ZADD`` of ``throttle.lua`` on a window key, seen
    through ``MONITOR``, as ``{throttle key: [Redis-clock ms, ...]}``. These are the exact starts the limit counts
    (a handler's own clock would add its start-up lag, which a loaded machine stretches past any margin)."""
    import re
    import threading

    import redis

    seen: dict[str, list[int]] = {}
    client = redis.Redis.from_url(redis_url)
    monitor = client.monitor().__enter__()
    pattern = re.compile(r"^ZADD \S*throttle:calls:CallApi:(\S+) (\d+) ")

    def read() -> None:
        try:
            while True:
                cmd = monitor.next_command()
                m = pattern.match(cmd["command"]) if cmd["client_type"] == "lua" else None
                if m:
                    seen.setdefault(m.group(1), []).append(int(m.group(2)))
        except Exception:  # the connection closed at the test's end
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    yield seen
    monitor.connection.disconnect()
    reader.join(5)
    client.close()


def tightest_window(ts: list[int]) -> int:
    """The shortest span holding 4 admissions (3 per 600 ms allows no 4 within 600 ms)."""
    ts = sorted(ts)
    return min(b - a for a, b in zip(ts, ts[3:]))


def test_the_rate_limit_per_key_holds_across_two_processes_and_waiting_spends_no_attempt(cluster, r, keys, admissions):
    _run, p = cluster
    wait_for(lambda: len(r.hgetall(keys.workers)) == 2, what="two workers")
    for i in range(15):
        for cust in ("a", "b"):
            p.enqueue("calls", {"customer": {"id": cust}, "i": i}, trace_id=f"{cust}{i}")
    for i in range(3):
        p.enqueue("calls", {"customer": {"name": "no id"}, "i": i}, trace_id=f"bad{i}")
    wait_for(lambda: r.llen("test:starts:a") == 15 and r.llen("test:starts:b") == 15, timeout=30, what="all calls ran")
    for cust in ("a", "b"):
        starts = sorted(json.loads(x) for x in r.lrange(f"test:starts:{cust}", 0, -1))
        assert {a for _, a in starts} == {1}  # no attempt spent waiting (max_retries is 0)
        # Every admission Redis made (the MONITOR reader may still be catching up): no 4 within one 600 ms window,
        # and 15 take at least 4 windows.
        wait_for(lambda: len(admissions.get(cust, [])) >= 15, timeout=10, what=f"{cust}'s admissions seen")
        admitted = sorted(admissions[cust])
        assert len(admitted) == 15, (cust, admitted)
        assert tightest_window(admitted) >= 600, (cust, admitted)
        assert admitted[-1] - admitted[0] >= 4 * 600
    throttled = events(r, keys, "message.throttled")
    assert throttled and {e.data["reason"] for e in throttled} == {"limit"} and all(e.data["wait_ms"] > 0 for e in throttled)
    assert {e.data["key"] for e in throttled} <= {"a", "b"}
    # Counted with the event, by the script that re-delays the message.
    assert int(r.hget(keys.metrics_counts, "message.throttled|calls|CallApi") or 0) == len(throttled)
    by_worker = {e.worker for e in events(r, keys, "message.processed")}
    assert len(by_worker) == 2  # both processes ran calls
    # A message without the key is dead-lettered, naming the path.
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("calls.dlq") == 3, what="three dead letters")
    assert all("throttle key 'customer.id'" in e.error for e in store.list("calls.dlq"))


def test_the_window_counts_a_late_handler_from_its_start_not_its_admission(cluster, r, keys):
    """Given a limit of 3 per 600 ms, when the first admitted message's handler starts 400 ms after its admission (its
    input check takes that long) and six more wait behind it, then no 600 ms window of the handlers' own start times
    holds four starts: its record in the window moved to its start. (Counted from admissions only, the next
    period's starts, on time, came 200 ms after the late one: four within 600 ms.)"""
    _run, p = cluster
    wait_for(lambda: len(r.hgetall(keys.workers)) == 2, what="two workers")
    p.enqueue("late", {"k": "x", "slow_ms": 400}, trace_id="late0")
    window = keys.throttle("late", "Late", "x")
    wait_for(lambda: r.zcard(window) == 1, timeout=10, interval=0.005, what="the slow message admitted")
    for i in range(1, 7):
        p.enqueue("late", {"k": "x"}, trace_id=f"late{i}")
    wait_for(lambda: r.llen("test:late-starts") == 7, timeout=30, what="all seven handlers started")
    starts = sorted(json.loads(x) for x in r.lrange("test:late-starts", 0, -1))
    spans = [b - a for a, b in zip(starts, starts[3:])]
    # A handler's clock reads a moment after its record, more on a loaded machine: allow 200 ms
    # (counted from admissions, the four starts fell within ~210 ms).
    assert min(spans) >= 400, [round(t - starts[0]) for t in starts]


def test_a_handler_starting_more_than_a_period_after_its_admission_is_admitted_again(cluster, r, keys):
    """Given a limit of 3 per 600 ms, when three admitted messages' handlers start 800 ms after their admission (their
    input checks take that long: their records have left the window, and six more messages were admitted in their
    place), then no 600 ms window of the handlers' own start times holds four starts: a start that finds its record
    gone is admitted again, or goes back to wait (``message.throttled`` with ``at_start``, no attempt spent); and
    every message runs once."""
    _run, p = cluster
    wait_for(lambda: len(r.hgetall(keys.workers)) == 2, what="two workers")
    for i in range(3):
        p.enqueue("late", {"k": "y", "slow_ms": 800}, trace_id=f"slow{i}")
    window = keys.throttle("late", "Late", "y")
    wait_for(lambda: r.zcard(window) == 3, timeout=10, interval=0.005, what="the three slow messages admitted")
    for i in range(3, 9):
        p.enqueue("late", {"k": "y"}, trace_id=f"fast{i}")
    wait_for(lambda: len(events(r, keys, "message.processed")) == 9, timeout=60, what="all nine processed")
    starts = sorted(json.loads(x) for x in r.lrange("test:late-starts", 0, -1))
    assert len(starts) == 9, "a handler ran twice"
    spans = [b - a for a, b in zip(starts, starts[3:])]
    # A handler's clock reads a moment after its record: allow 100 ms (without the new admission: six within ~170 ms).
    assert min(spans) >= 500, [round(t - starts[0]) for t in starts]
    processed = events(r, keys, "message.processed")
    assert sorted(e.trace_id for e in processed) == sorted([f"slow{i}" for i in range(3)] + [f"fast{i}" for i in range(3, 9)])
    assert {e.attempt for e in processed} == {1}, "waiting on the throttle spent an attempt"
    at_start = [e for e in events(r, keys, "message.throttled") if e.data.get("at_start")]
    assert at_start and {e.trace_id for e in at_start} <= {"slow0", "slow1", "slow2"}
    assert all(e.data["reason"] == "limit" and e.data["wait_ms"] > 0 for e in at_start)
    assert not events(r, keys, "message.failed"), "a start sent back to wait was reported as a failure"


def test_messages_that_all_start_more_than_a_period_after_admission_all_run_within_the_limit(cluster, r, keys):
    """Given a limit of 3 per 600 ms, when six messages' handlers all start 800 ms after their admission, then all
    six run (a message sent back at its start is admitted at its start from then on: admitted early again, each
    group's records would leave the window before its start, and the two groups would send each other back for
    good), and no 600 ms window of start times holds four."""
    _run, p = cluster
    wait_for(lambda: len(r.hgetall(keys.workers)) == 2, what="two workers")
    for i in range(6):
        p.enqueue("late", {"k": "z", "slow_ms": 800}, trace_id=f"all-slow{i}")
    wait_for(lambda: len(events(r, keys, "message.processed")) == 6, timeout=40, what="all six processed")
    starts = sorted(json.loads(x) for x in r.lrange("test:late-starts", 0, -1))
    assert len(starts) == 6, "a handler ran twice"
    spans = [b - a for a, b in zip(starts, starts[3:])]
    assert min(spans) >= 500, [round(t - starts[0]) for t in starts]
    assert {e.attempt for e in events(r, keys, "message.processed")} == {1}


def test_the_start_hooks_wait_for_redis_is_not_charged_to_the_handlers_time_limit(cluster, r, keys):
    """Given a time limit of 1,000 ms, when Redis answers no client for 1,500 ms just as an admitted message's
    handler is about to start late, then the handler runs once its start is counted, on its first attempt, and
    no ``message.failed`` says it ran past its time limit: the throttle's own wait for Redis is not the handler's."""
    _run, p = cluster
    wait_for(lambda: len(r.hgetall(keys.workers)) == 2, what="two workers")
    p.enqueue("late", {"k": "p", "pause_redis_ms": 1500}, trace_id="paused")
    wait_for(lambda: events(r, keys, "message.processed"), timeout=30, what="the message processed")
    assert not events(r, keys, "message.failed"), [e.error for e in events(r, keys, "message.failed")]
    processed = events(r, keys, "message.processed")
    assert [(e.trace_id, e.attempt) for e in processed] == [("paused", 1)]
    assert r.llen("test:late-starts") == 1


def test_concurrency_per_key_holds_across_two_processes(cluster, r, keys):
    _run, p = cluster
    wait_for(lambda: len(r.hgetall(keys.workers)) == 2, what="two workers")
    for i in range(10):
        for tenant in ("t1", "t2"):
            p.enqueue("exports", {"tenant": tenant, "i": i}, trace_id=f"{tenant}-{i}")
    wait_for(lambda: r.llen("test:runs:t1") == 10 and r.llen("test:runs:t2") == 10, timeout=30, what="all exports ran")
    overall = []
    for tenant in ("t1", "t2"):
        runs = [json.loads(x) for x in r.lrange(f"test:runs:{tenant}", 0, -1)]
        overall += runs
        # At each start, how many of the tenant's runs were going on (its own included).
        peak = max(sum(1 for s, e in runs if s <= t0 < e) for t0, _ in runs)
        assert peak <= 2, (tenant, peak)
    # Across tenants more than 2 ran at once: the limit is per key, not per topic.
    assert max(sum(1 for s, e in overall if s <= t0 < e) for t0, _ in overall) > 2
    assert {e.data["reason"] for e in events(r, keys, "message.throttled")} == {"concurrency_per_key"}


def test_key_paths_read_scalars_only():
    data = {"customer": {"id": 7, "tags": ["x", "y"]}, "flag": True, "empty": ""}
    assert key_value(data, "customer.id") == "7" and key_value(data, "customer.tags.1") == "y"
    for path in ("customer", "customer.nope", "flag", "empty", "customer.tags.9", "customer.id.x"):
        assert key_value(data, path) is None, path


def test_the_rate_limit_holds_while_worker_processes_are_killed(cluster, r, keys, admissions):
    """Given two worker processes sharing throttled calls, when one is SIGKILLed twice mid-run (the supervisor
    restarts it and gives back what it held), then every call still runs and no key's window ever held more starts
    than the limit: a redelivered call is admitted again, so it counts again."""
    import os
    import random
    import signal

    _run, p = cluster
    wait_for(lambda: len(r.hgetall(keys.workers)) == 2, what="two workers")
    for i in range(20):
        for cust in ("a", "b"):
            p.enqueue("calls", {"customer": {"id": cust}, "i": i}, trace_id=f"{cust}{i}")
    rng = random.Random(5)
    kills = 0

    for _ in range(2):
        time.sleep(rng.uniform(0.4, 1.0))
        victim = rng.choice(sorted(worker_pids(r, keys)))
        os.kill(victim, signal.SIGKILL)
        kills += 1
        # Replaced, and its entry gone: the next victim is never the dead one still registered.
        wait_for(
            lambda v=victim: v not in (pids := worker_pids(r, keys)) and len(pids) == 2,
            timeout=30,
            what="the killed worker replaced",
        )
    wait_for(
        lambda: len({e.message_id for e in events(r, keys, "message.processed")}) == 40, timeout=60, what="all 40 calls processed"
    )
    assert kills == 2
    for cust in ("a", "b"):
        assert r.llen(f"test:starts:{cust}") >= 20
        # Every admission, redelivered calls' second ones included (a killed call counts again).
        wait_for(lambda: len(admissions.get(cust, [])) >= 20, timeout=10, what=f"{cust}'s admissions seen")
        admitted = admissions[cust]
        assert len(admitted) >= 20 and tightest_window(admitted) >= 600, (cust, sorted(admitted))


def test_a_default_throttle_leaves_cron_and_state_queues_alone(tmp_path):
    """A throttle in `default` names a path into messages' data; cron ticks and state changes are not throttled
    by it (their queues take a throttle only from an entry of their own)."""
    from types import SimpleNamespace

    from iii_console.adapters.queue.throttle import Throttle
    from iii_console.core.emitter import null_emitter

    f = tmp_path / "iii-config.yaml"
    f.write_text("queues:\n  default:\n    throttle: {key: customer, limit: 1, period_ms: 1000}\n")
    mw = Throttle(load_config(f), null_emitter())
    tick = SimpleNamespace(
        options={"topic": "_cron.Cleanup"}, queue_name="_cron--Cleanup--normal", args=({"x": 1},), message_id="m"
    )
    assert mw.before_process_message(object(), tick) is None  # returns without asking Redis: the broker is not one
