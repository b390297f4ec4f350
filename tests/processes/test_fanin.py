"""Fan-in: a group's completion is enqueued exactly once, when every child is settled —
processed, failed for good, invalid input, or dead-lettered after max_deliveries — even
with worker processes SIGKILLed at random moments. Real Redis, real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import textwrap
import time

import pytest

from iii_console.adapters.queue.producer import EnqueueError
from iii_console.core.dlq import DeadLetterStore

from ..helpers import events, events_once, make_project, start_cli, wait_for

CHILD = """
import os, signal, time
from pydantic import BaseModel
from iii_console import Step, queue

class Part(BaseModel):
    n: int
    mode: str = "ok"

config = Step(name="Part", triggers=[queue("parts", input=Part)])

def handler(part, ctx):
    ctx.state.update("parts", str(part.n), [{"type": "increment", "path": "runs"}])
    time.sleep(float(os.environ.get("PART_SLEEP", "0")) * (part.n % 5))
    if part.mode == "fail":
        raise RuntimeError(f"part {part.n} failed")
    if part.mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
"""

DONE = """
from iii_console import Step, queue
config = Step(name="Assemble", triggers=[queue("parts.done")])
def handler(result, ctx):
    ctx.state.set("completions", ctx.message_id, result)
"""

PARENT = """
from iii_console import Step, queue
config = Step(name="Split", triggers=[queue("jobs")])
def handler(job, ctx):
    gid = ctx.enqueue_group("parts", job["parts"], then="parts.done", group_id=job.get("id"))
    ctx.state.set("groups", gid, {"trace": ctx.trace_id})
"""


def completions(r, keys) -> list[dict]:
    return [json.loads(v) for v in r.hgetall(keys.state_group("completions")).values()]


def parts(n_ok: int, n_fail: int, n_invalid: int, crash: int = 0) -> list[dict]:
    out: list[dict] = [{"n": i} for i in range(n_ok)]
    out += [{"n": n_ok + i, "mode": "fail"} for i in range(n_fail)]
    out += [{"n": "not a number"} for _ in range(n_invalid)]
    out += [{"n": 900 + i, "mode": "crash"} for i in range(crash)]
    return out


def test_the_completion_carries_counts_and_child_ids_once_every_child_is_settled(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"part_step.py": CHILD, "done_step.py": DONE, "split_step.py": PARENT},
        "queues:\n  parts:\n    max_retries: 1\n    retry_delay: 20\n",
    )
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("jobs", {"parts": parts(5, 2, 1), "id": "g1"}, trace_id="trace-g")
    wait_for(lambda: completions(r, keys), what="completion")
    time.sleep(0.3)
    [result] = completions(r, keys)
    assert (result["group_id"], result["total"], result["ok"], result["failed"], result["dead"]) == ("g1", 8, 5, 2, 1)
    assert len(result["children"]) == 8 and len(result["failed_ids"]) == 2 and len(result["dead_ids"]) == 1
    assert set(result["failed_ids"]) | set(result["dead_ids"]) <= set(result["children"])
    [done] = events(r, keys, "group.completed")
    assert done.trace_id == "trace-g" and done.data == {"group_id": "g1", "total": 8, "ok": 5, "failed": 2, "dead": 1}
    [enq] = [e for e in events(r, keys, "message.enqueued") if e.topic == "parts.done"]
    assert enq.data["payload"]["ok"] == 5 and enq.trace_id == "trace-g"
    from iii_console.core.groups import read_group

    assert read_group(r, keys, "g1") == {
        "group_id": "g1",
        "total": 8,
        "pending": 0,
        "ok": 5,
        "failed": 2,
        "dead": 1,
        "settled": 8,
        "percent": 100.0,
        "completed_ms": read_group(r, keys, "g1")["completed_ms"],
        "topic": "parts",
        "then": "parts.done",
    }
    assert read_group(r, keys, "g1")["completed_ms"] > 0 and read_group(r, keys, "nope") is None
    record = r.hgetall(keys.group("g1"))
    assert record[b"pending"] == b"0" and b"completed_ms" in record and b"done" not in record
    assert 0 < r.pttl(keys.group("g1")) <= 7 * 86_400_000
    # The same group id again enqueues nothing.
    producer(cfg, steps).enqueue("jobs", {"parts": parts(2, 0, 0), "id": "g1"}, trace_id="again")
    wait_for(
        lambda: len([e for e in events(r, keys, "message.processed") if e.step == "Split"]) == 2, what="second split processed"
    )
    time.sleep(0.3)
    assert len(completions(r, keys)) == 1 and json.loads(r.hget(keys.state_group("parts"), "0"))["runs"] == 1


def test_an_empty_group_completes_at_once_and_bad_groups_are_refused(project, runtime, producer, r, keys):
    cfg, steps = project({"part_step.py": CHILD, "done_step.py": DONE})
    runtime(cfg, steps)
    p = producer(cfg, steps)
    gid = p.enqueue_group("parts", [], then="parts.done", trace_id="t")
    wait_for(lambda: completions(r, keys), what="empty completion")
    assert completions(r, keys) == [
        {"group_id": gid, "total": 0, "ok": 0, "failed": 0, "dead": 0, "children": [], "failed_ids": [], "dead_ids": []}
    ]
    with pytest.raises(EnqueueError, match=r"group's topic 'nobody\.works'"):
        p.enqueue_group("nobody.works", [{"n": 1}], then="parts.done", trace_id="t")
    for kw, msg in (
        ({"then": "nobody.listens"}, "no step subscribes"),
        ({"then": "parts.done", "group_id": "a b"}, "group_id"),
        ({"then": ""}, "then="),
    ):
        with pytest.raises(EnqueueError, match=msg):
            p.enqueue_group("parts", [{"n": 1}], trace_id="t", **kw)
    with pytest.raises(EnqueueError, match="list"):
        p.enqueue_group("parts", {"n": 1}, then="parts.done", trace_id="t")


def test_each_child_may_have_its_own_priority(project, producer, r, keys):
    cfg, steps = project({"part_step.py": CHILD, "done_step.py": DONE})
    p = producer(cfg, steps)
    p.enqueue_group(
        "parts", [{"n": 0}, {"n": 1}, {"n": 2}], then="parts.done", priority=["high", None, "low"], group_id="prio", trace_id="t"
    )
    enq = {e.data["payload"]["n"]: e for e in events_once(r, keys, "message.enqueued", 3)}
    assert [enq[n].data["priority"] for n in range(3)] == ["high", "normal", "low"]
    assert len({enq[n].queue for n in range(3)}) == 3
    for bad, msg in (
        (["high"], "1 priorities for 3 items"),
        ({"n": "high"}, "list of one per item"),
        (["high", "urgent", "low"], "priority must be one of"),
    ):
        with pytest.raises(EnqueueError, match=msg):
            p.enqueue_group("parts", [{"n": 0}, {"n": 1}, {"n": 2}], then="parts.done", priority=bad, trace_id="t")
    assert len(events(r, keys, "message.enqueued")) == 3  # nothing of a refused group was enqueued


CONFIG = """
server:
  port: 0
queues:
  parts:
    max_retries: 1
    retry_delay: 20
    max_deliveries: 2
    concurrency: 4
workers:
  heartbeat_interval: 0.3
  heartbeat_timeout: 2
  sweep_interval: 0.3
"""


def _worker_pids(r, keys) -> list[int]:
    return [json.loads(v)["pid"] for v in r.hgetall(keys.workers).values()]


@pytest.mark.slow
def test_with_two_worker_processes_killed_at_random_the_completion_fires_exactly_once(tmp_path, redis_url, r, keys):
    groups = 6
    steps = {"part_step.py": CHILD, "done_step.py": DONE, "split_step.py": PARENT}
    make_project(tmp_path, {n: textwrap.dedent(s) for n, s in steps.items()}, CONFIG, redis_url=redis_url)
    # Long enough that the groups outlast at least three kills (0.1-0.4 s apart) however fast acks are.
    os.environ["PART_SLEEP"] = "0.04"
    try:
        run = start_cli(tmp_path, "--no-ui", "--role", "worker", "--processes", "2", "--threads", "4")
    finally:
        del os.environ["PART_SLEEP"]
    rng = random.Random(13)
    try:
        wait_for(lambda: len(_worker_pids(r, keys)) == 2, what="two workers up")
        from iii_console.adapters.queue.producer import subscriptions_for
        from iii_console.core.config import load_config
        from iii_console.core.discovery import discover
        from iii_console.runtime.runner import StepRunner
        from iii_console.runtime.services import Services

        cfg = load_config(tmp_path / "iii-config.yaml")
        svc = Services.open(cfg, "test")
        p = StepRunner(svc, subscriptions_for(discover(cfg.steps_path).steps)).producer
        # One group has a child that kills its worker every time (dead after max_deliveries).
        for g in range(groups):
            p.enqueue("jobs", {"parts": parts(30, 3, 2, crash=1 if g == 0 else 0), "id": f"g{g}"}, trace_id=f"t{g}")
        kills = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(completions(r, keys)) < groups:
            time.sleep(rng.uniform(0.1, 0.4))
            pids = _worker_pids(r, keys)
            if pids and kills < 6:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        wait_for(lambda: len(completions(r, keys)) >= groups, timeout=60, what="every group completed")
        time.sleep(1.0)  # anything that would enqueue a second completion has had its chance
        done_by_group: dict[str, list[dict]] = {}
        for c in completions(r, keys):
            done_by_group.setdefault(c["group_id"], []).append(c)
        assert sorted(done_by_group) == [f"g{g}" for g in range(groups)]
        enqueued = [e for e in events(r, keys, "message.enqueued") if e.topic == "parts.done"]
        assert len(enqueued) == groups, f"{len(enqueued)} completions enqueued for {groups} groups"
        assert len(events(r, keys, "group.completed")) == groups
        dead_letters = {e.id for e in DeadLetterStore(r, keys).list("dead-letters", limit=10_000)}
        for g in range(groups):
            [res] = done_by_group[f"g{g}"]  # one completion message per group
            crash = 1 if g == 0 else 0
            # A kill can push a prefetched child past max_deliveries (dead), so counts are checked against Redis.
            assert res["total"] == 35 + crash == res["ok"] + res["failed"] + res["dead"] == len(res["children"]), res
            assert res["failed"] + res["dead"] >= 5 + crash and res["failed"] <= 3 and res["ok"] <= 30, res
            not_ok = set(res["failed_ids"]) | set(res["dead_ids"])
            assert len(not_ok) == res["failed"] + res["dead"] and not_ok <= dead_letters
            assert (set(res["children"]) - not_ok).isdisjoint(dead_letters)  # the ok ones were processed, not dead
        assert kills >= 3, kills
        svc.close()
    finally:
        run.stop()


FLAKY_PARENT = """
from iii_console import Step, queue
config = Step(name="Split", triggers=[queue("jobs")])
def handler(job, ctx):
    gid = ctx.enqueue_group("parts", job["parts"], then="parts.done")
    ctx.state.update("groups", "made", [{"type": "set", "path": [str(ctx.attempt)], "value": gid}])
    if ctx.attempt == 1:
        raise RuntimeError("the parent fails after making its group")
"""


def test_a_parent_run_twice_makes_its_group_once(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"part_step.py": CHILD, "done_step.py": DONE, "split_step.py": FLAKY_PARENT}, "queues:\n  jobs:\n    retry_delay: 20\n"
    )
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("jobs", {"parts": parts(3, 0, 0)}, trace_id="t")
    wait_for(lambda: completions(r, keys), what="completion")
    wait_for(lambda: len(json.loads(r.hget(keys.state_group("groups"), "made") or "{}")) == 2, what="two parent runs")
    time.sleep(0.3)
    made = json.loads(r.hget(keys.state_group("groups"), "made"))
    assert made["1"] == made["2"] == f"{mid}.0"  # the same group id on the rerun: enqueued once
    [result] = completions(r, keys)
    assert result["total"] == 3 and result["ok"] == 3
    assert len([e for e in events(r, keys, "message.enqueued") if e.topic == "parts"]) == 3


NOOP_CHILD = """
from iii_console import Step, queue
config = Step(name="Part", triggers=[queue("parts")])
def handler(part, ctx):
    pass
"""


def test_a_group_of_thousands_of_children_is_enqueued_whole_and_completes(project, runtime, producer, r, keys):
    """A record of 5,000 children (two fields each) is more than one Lua ``unpack`` takes: it is written in parts,
    not refused halfway (which left the id taken, no record and no child, and a retry enqueued nothing)."""
    cfg, steps = project({"part_step.py": NOOP_CHILD, "done_step.py": DONE})
    p = producer(cfg, steps)
    gid = p.enqueue_group("parts", [{"n": i} for i in range(5000)], then="parts.done", trace_id="t", group_id="big")
    assert r.llen(keys.queue("parts--Part--normal")) == 5000
    assert r.hget(keys.group(gid), "total") == b"5000" and r.hlen(keys.group(gid)) == 13 + 5000
    runtime(cfg, steps)
    wait_for(lambda: completions(r, keys), timeout=60, what="the completion")
    [result] = completions(r, keys)
    assert (result["total"], result["ok"], len(result["children"])) == (5000, 5000, 5000)


def test_a_group_id_used_again_starts_clean_once_the_old_group_completed_and_not_while_it_runs(
    project, runtime, producer, r, keys
):
    """Past the once-key's 24 h (deleted here) a completed group's id makes a new group: none of the old
    children, counts or expiry carry over. A group of that id still running is not replaced."""
    cfg, steps = project({"part_step.py": CHILD, "done_step.py": DONE}, "queues:\n  parts:\n    max_retries: 0\n")
    p = producer(cfg, steps)
    rt = runtime(cfg, steps)
    p.enqueue_group("parts", parts(1, 1, 0), then="parts.done", trace_id="day1", group_id="nightly")
    wait_for(lambda: completions(r, keys), timeout=30, what="day 1's completion")
    assert completions(r, keys)[0]["failed"] == 1
    r.delete(keys.once("group:nightly"))  # its 24 h are over
    rt.stop()
    r.delete(keys.state_group("completions"))
    p.enqueue_group("parts", parts(2, 0, 0), then="parts.done", trace_id="day2", group_id="nightly")
    assert r.pttl(keys.group("nightly")) == -1  # not the old record's 7 days
    assert r.hget(keys.group("nightly"), "completed_ms") is None
    # Running (its children wait): the id used again past its once-key enqueues nothing and keeps this group.
    r.delete(keys.once("group:nightly"))
    p.enqueue_group("parts", parts(5, 0, 0), then="parts.done", trace_id="day2-again", group_id="nightly")
    assert r.hget(keys.group("nightly"), "total") == b"2"
    runtime(cfg, steps)
    wait_for(lambda: completions(r, keys), timeout=30, what="day 2's completion")
    [result] = completions(r, keys)
    assert (result["total"], result["ok"], result["failed"], result["failed_ids"]) == (2, 2, 0, [])
    assert len([e for e in events(r, keys, "message.enqueued") if e.topic == "parts" and e.trace_id == "day2-again"]) == 0
