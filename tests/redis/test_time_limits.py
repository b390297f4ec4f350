"""Per-queue time limits on real Redis with in-process workers: the hard limit fails the
attempt with ``TimeLimitExceeded`` (then retries), the soft one lets a handler clean up,
async handlers are cancelled, and the other threads keep working meanwhile."""

from __future__ import annotations

import json
import threading
import time

import pytest

from iii_console.adapters.queue.timelimit import TimeLimits
from iii_console.core.config import load_config
from iii_console.core.dlq import DeadLetterStore
from iii_console.core.errors import ConfigError, SoftTimeLimitExceeded, TimeLimitExceeded

from ..helpers import events, events_once, wait_for

SLOW = """
import time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "Slow", [{"type": "increment", "path": data["k"]}])
    if data["k"].startswith("slow"):
        for _ in range(400):          # Python code between short sleeps: the exception lands at once
            time.sleep(0.025)
    ctx.state.set("done", data["k"], int(time.time() * 1000))
"""


def test_a_handler_past_its_limit_fails_with_time_limit_exceeded_and_is_retried_while_other_threads_keep_working(
    project, runtime, producer, r, keys
):
    cfg, steps = project(
        {"slow_step.py": SLOW},
        """
        queues:
          jobs:
            time_limit_ms: 1000
            max_retries: 1
            retry_delay: 100
            dead_letter_queue: jobs.dlq
    """,
    )
    runtime(cfg, steps, threads=3)
    prod = producer(cfg, steps)
    t0 = int(time.time() * 1000)
    [slow] = prod.enqueue("jobs", {"k": "slow"}, trace_id="t")
    quick = [prod.enqueue("jobs", {"k": f"q{i}"}, trace_id="t")[0] for i in range(30)]
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("jobs.dlq") == 1, timeout=20, what="the slow message dead-lettered after its retry")
    [entry] = store.list("jobs.dlq")
    assert entry.message_id == slow and entry.attempts == 2
    assert entry.error == "TimeLimitExceeded: handler ran past queues.jobs.time_limit_ms (1000 ms)"
    assert "time.sleep" in entry.traceback  # where the handler was when the limit hit
    failed = events_once(r, keys, "message.failed", 2, where=lambda e: e.message_id == slow)
    assert all(e.error == entry.error for e in failed)
    assert all(950 <= e.duration_ms < 5000 for e in failed), [e.duration_ms for e in failed]
    [retry] = [e for e in events(r, keys, "message.retrying") if e.message_id == slow]
    assert retry.attempt == 2
    # Every quick message ran once, and they did not wait for the slow one's limit.
    runs = json.loads(r.hget(keys.state_group("runs"), "Slow"))
    assert runs == {"slow": 2, **{f"q{i}": 1 for i in range(30)}}
    done = {k.decode(): int(v) for k, v in r.hgetall(keys.state_group("done")).items()}
    assert set(done) == {f"q{i}" for i in range(30)}
    first_failure = min(e.ts for e in failed)
    assert max(done.values()) < first_failure, "the quick messages waited for the slow one"
    assert {e.message_id for e in events(r, keys, "message.processed")} == set(quick)
    print(
        f"\nquick messages done {max(done.values()) - t0} ms after sending; slow attempt ran "
        f"{[e.duration_ms for e in failed]} ms against a 1000 ms limit"
    )


SOFT = """
import time
from iii_console import SoftTimeLimitExceeded, Step, TimeLimitExceeded, queue
config = Step(name="Soft", triggers=[queue("jobs")])
def handler(data, ctx):
    try:
        for _ in range(400):
            time.sleep(0.025)
    except SoftTimeLimitExceeded:
        ctx.state.set("soft", data["k"], "cleaned up")
        if data["k"] == "clean":
            return                      # stops in time: the attempt succeeds
        if data["k"] == "reraise":
            raise
    try:
        for _ in range(400):            # "stubborn" carries on, and swallows the hard limit too
            time.sleep(0.025)
    except TimeLimitExceeded:
        ctx.state.set("hard", data["k"], "swallowed")
"""


def test_the_soft_limit_lets_a_handler_clean_up_and_the_hard_limit_fails_it_even_if_caught(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"soft_step.py": SOFT},
        """
        queues:
          jobs:
            soft_time_limit_ms: 200
            time_limit_ms: 600
            max_retries: 0
    """,
    )
    runtime(cfg, steps, threads=3)
    prod = producer(cfg, steps)
    ids = {k: prod.enqueue("jobs", {"k": k}, trace_id="t")[0] for k in ("clean", "reraise", "stubborn")}
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("dead-letters") == 2, timeout=20, what="two dead letters")
    errors = {e.message_id: e.error for e in store.list("dead-letters")}
    assert errors == {
        ids["reraise"]: "SoftTimeLimitExceeded: handler ran past queues.jobs.soft_time_limit_ms (200 ms)",
        ids["stubborn"]: "TimeLimitExceeded: handler ran past queues.jobs.time_limit_ms (600 ms)",
    }
    [ok] = events_once(r, keys, "message.processed", 1)
    assert ok.message_id == ids["clean"]
    assert {k.decode() for k in r.hkeys(keys.state_group("soft"))} == {"clean", "reraise", "stubborn"}
    assert r.hget(keys.state_group("hard"), "stubborn") == b'"swallowed"'


ASYNC = """
import asyncio
from iii_console import Step, queue
config = Step(name="Async", triggers=[queue("jobs")])
async def handler(data, ctx):
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await ctx.state.set("cancelled", data["k"], True)
        raise
"""


def test_an_async_handler_past_its_limit_is_cancelled_and_fails_with_time_limit_exceeded(project, runtime, producer, r, keys):
    cfg, steps = project({"async_step.py": ASYNC}, "queues:\n  jobs:\n    time_limit_ms: 300\n    max_retries: 0\n")
    runtime(cfg, steps, threads=2)
    [mid] = producer(cfg, steps).enqueue("jobs", {"k": "a"}, trace_id="t")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("dead-letters") == 1, timeout=15, what="the async message dead-lettered")
    [entry] = store.list("dead-letters")
    assert entry.message_id == mid and entry.error == "TimeLimitExceeded: handler ran past queues.jobs.time_limit_ms (300 ms)"
    wait_for(lambda: r.hget(keys.state_group("cancelled"), "a") == b"true", what="the coroutine to see its cancellation")


ASYNC_TIMEOUT = """
from iii_console import Step, queue
config = Step(name="AsyncTimeout", triggers=[queue("jobs")])
async def handler(data, ctx):
    raise TimeoutError("upstream took too long")
"""


def test_an_async_handlers_own_timeout_error_is_an_ordinary_failure(project, runtime, producer, r, keys):
    cfg, steps = project({"async_step.py": ASYNC_TIMEOUT}, "queues:\n  jobs:\n    max_retries: 0\n")
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("jobs", {}, trace_id="t")
    [failed] = events_once(r, keys, "message.failed", 1)
    assert failed.error == "TimeoutError: upstream took too long"


def test_without_limits_a_handler_runs_as_long_as_it_takes(project, runtime, producer, r, keys):
    cfg, steps = project({"slow_step.py": SLOW}, "queues:\n  jobs:\n    time_limit_ms: 0\n")
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("jobs", {"k": "slowish"}, trace_id="t")
    wait_for(lambda: r.hexists(keys.state_group("done"), "slowish"), timeout=30, what="the 10 s handler to finish")
    assert not events(r, keys, "message.failed")


def test_limits_raise_only_inside_the_guarded_call_and_the_pending_exception_is_cleared():
    """The monitor's exception never outlives the call: a handler that returns right at its
    limit leaves nothing pending for the code that runs next on the thread."""
    limits = TimeLimits(lambda _t: (0, 50), on_stuck=lambda _r: None)
    outcomes = []
    for _ in range(20):
        try:
            limits.call(lambda: time.sleep(0.05), topic="t", message_id="m", queue="q", redis_message_id="r")
            outcomes.append("ok")
        except TimeLimitExceeded:
            outcomes.append("limit")
        # Python code after the call: a stray pending exception would surface here.
        for _ in range(20000):
            pass
    assert set(outcomes) <= {"ok", "limit"} and len(outcomes) == 20
    limits.close()


def test_a_thread_stuck_in_a_c_call_is_reported_once_after_the_grace():
    stuck = []
    limits = TimeLimits(lambda _t: (0, 100), on_stuck=stuck.append, grace_s=0.3)
    done = threading.Event()

    def run() -> None:
        try:
            limits.call(lambda: time.sleep(3), topic="t", message_id="m1", queue="q", redis_message_id="r1")
        except TimeLimitExceeded as exc:
            done.set()
            assert str(exc) == "handler ran past queues.t.time_limit_ms (100 ms)"

    t = threading.Thread(target=run)
    t0 = time.monotonic()
    t.start()
    wait_for(lambda: stuck, timeout=5, what="the stuck report")
    took = time.monotonic() - t0
    assert 0.35 <= took < 2.5, took  # limit + grace (0.4 s), not the end of the 3 s sleep
    assert [s.message_id for s in stuck] == ["m1"]
    t.join(5)
    assert done.is_set()  # once the C call returned, the limit still failed the attempt
    assert len(stuck) == 1
    limits.close()


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "queues:\n  jobs:\n    time_limit_ms: 100\n    soft_time_limit_ms: 100\n",
            "iii-config.yaml:2: queues.jobs: soft_time_limit_ms (100) must be below time_limit_ms (100)",
        ),
        (
            "queues:\n  default:\n    soft_time_limit_ms: 5000\n  jobs:\n    time_limit_ms: 3000\n",
            "queues.jobs, with what it inherits from queues.default: soft_time_limit_ms (5000) must be below time_limit_ms (3000)",
        ),
        (
            "queues:\n  jobs:\n    time_limit_ms: -1\n",
            "iii-config.yaml:3: queues.jobs.time_limit_ms: Input should be greater than or equal to 0",
        ),
    ],
)
def test_inconsistent_limits_are_config_errors_naming_the_key(tmp_path, text, message):
    (tmp_path / "iii-config.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "iii-config.yaml", env={})
    assert message in str(err.value)


def test_soft_limit_errors_are_time_limit_errors():
    assert issubclass(SoftTimeLimitExceeded, TimeLimitExceeded)
