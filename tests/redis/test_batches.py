"""Batched queue triggers: the handler gets a list; each message is retried and dead-lettered
on its own. Real Redis, a real worker."""

from __future__ import annotations

import json
import time

import pytest

from iii_console.core.batch import BatchFailures, outcomes
from iii_console.core.dlq import DeadLetterStore

from ..helpers import events, wait_for

SENDER = """
import json, os
from pydantic import BaseModel
from iii_console import Step, queue
from iii_console import BatchFailures

class Mail(BaseModel):
    to: str
    customer: str = "c"
    bad: bool = False

config = Step(name="SendMails", triggers=[queue("mails", input=Mail, batch={batch})])

def handler(mails, ctx):
    assert isinstance(mails, list)
    ctx.state.update("batches", "all", [{{"type": "set", "path": [ctx.trigger["batch"]["message_ids"][0]],
                                         "value": {{"to": [m.to for m in mails], "customers": sorted({{m.customer for m in mails}}),
                                                   "attempt": ctx.attempt}}}}])
    bad = {{i: f"bounced: {{m.to}}" for i, m in enumerate(mails) if m.bad}}
    if bad:
        raise BatchFailures(bad)
"""


def batches(r, keys) -> list[dict]:
    raw = r.hget(keys.state_group("batches"), "all")
    return list(json.loads(raw).values()) if raw else []


def test_the_handler_gets_lists_of_up_to_max_size_and_every_message_is_processed(project, runtime, producer, r, keys):
    cfg, steps = project({"send_step.py": SENDER.format(batch='{"max_size": 4, "max_wait_ms": 300}')})
    p = producer(cfg, steps)
    for i in range(10):
        p.enqueue("mails", {"to": f"u{i}"}, trace_id=f"t{i}")
    runtime(cfg, steps, threads=2)  # a batch of 4 gets 4 threads even so
    wait_for(lambda: sum(len(b["to"]) for b in batches(r, keys)) == 10, what="ten mails in batches")
    got = batches(r, keys)
    sizes = sorted(len(b["to"]) for b in got)
    assert max(sizes) == 4 and sum(sizes) == 10 and len(got) <= 4, sizes
    assert sorted(t for b in got for t in b["to"]) == sorted(f"u{i}" for i in range(10))
    wait_for(lambda: len(events(r, keys, "message.processed")) == 10, what="ten processed events")


def test_a_lone_message_waits_at_most_max_wait_ms_then_runs_alone(project, runtime, producer, r, keys):
    cfg, steps = project({"send_step.py": SENDER.format(batch='{"max_size": 50, "max_wait_ms": 400}')})
    runtime(cfg, steps)
    t0 = time.monotonic()
    producer(cfg, steps).enqueue("mails", {"to": "solo"}, trace_id="t")
    wait_for(lambda: batches(r, keys), what="the batch of one")
    assert 0.35 <= time.monotonic() - t0 < 10
    assert batches(r, keys)[0]["to"] == ["solo"]


def test_failed_items_are_retried_and_dead_lettered_alone_and_the_rest_processed_once(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"send_step.py": SENDER.format(batch='{"max_size": 5, "max_wait_ms": 200}')},
        "queues:\n  mails:\n    max_retries: 1\n    retry_delay: 50\n    dead_letter_queue: mails.dlq\n",
    )
    p = producer(cfg, steps)
    ids = {}
    for i in range(5):
        [ids[i]] = p.enqueue("mails", {"to": f"u{i}", "bad": i in (1, 3)}, trace_id=f"t{i}")
    [invalid] = p.enqueue("mails", {"nope": 1}, trace_id="tx")
    runtime(cfg, steps)
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("mails.dlq") == 3, what="two bounced and one invalid dead-lettered")
    dead = {e.id: e for e in store.list("mails.dlq")}
    assert set(dead) == {ids[1], ids[3], invalid}
    assert dead[ids[1]].error == "RuntimeError: bounced: u1" and dead[ids[1]].attempts == 2
    assert dead[invalid].attempts == 1  # invalid input: not retried, never in a batch
    processed = {e.message_id for e in events(r, keys, "message.processed")}
    assert processed == {ids[0], ids[2], ids[4]}
    sent = [t for b in batches(r, keys) for t in b["to"]]
    assert sorted(sent) == ["u0", "u1", "u1", "u2", "u3", "u3", "u4"]  # the good ones once, the bad ones twice
    retried = [b for b in batches(r, keys) if b["attempt"] == 2]
    assert retried and all(set(b["to"]) <= {"u1", "u3"} for b in retried)


def test_a_batch_key_keeps_keys_apart_and_a_message_without_it_is_dead_lettered(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"send_step.py": SENDER.format(batch='{"max_size": 10, "max_wait_ms": 300, "key": "customer"}')},
        "queues:\n  mails:\n    dead_letter_queue: mails.dlq\n",
    )
    p = producer(cfg, steps)
    for i in range(6):
        p.enqueue("mails", {"to": f"u{i}", "customer": "ab"[i % 2]}, trace_id=f"t{i}")
    [nokey] = p.enqueue("mails", {"to": "x", "customer": ""}, trace_id="tk")
    runtime(cfg, steps)
    wait_for(lambda: sum(len(b["to"]) for b in batches(r, keys)) == 6, what="six mails")
    assert all(len(b["customers"]) == 1 for b in batches(r, keys))
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("mails.dlq") == 1, what="the keyless one dead-lettered")
    [entry] = store.list("mails.dlq")
    assert entry.id == nokey and "customer" in entry.error and "batch key" in entry.error


def test_batch_failures_are_checked():
    with pytest.raises(TypeError):
        BatchFailures({})
    boom = ValueError("x")
    assert outcomes(None, 2) == [None, None] and outcomes(boom, 2) == [boom, boom]
    res = outcomes(BatchFailures({1: "no"}), 3)
    assert res[0] is None and res[2] is None and str(res[1]) == "no"
    assert all(isinstance(e, IndexError) for e in outcomes(BatchFailures({5: "no"}), 2))


SLOW_SENDER = """
import time
from iii_console import Step, queue
config = Step(name="SendMails", triggers=[queue("mails", batch={"max_size": 2, "max_wait_ms": 1500})])
def handler(mails, ctx):
    t0 = time.monotonic()
    if any(m.get("slow") for m in mails):
        while time.monotonic() - t0 < 4:  # in Python: the time limit's exception reaches it
            time.sleep(0.01)
    ctx.state.set("runs", ctx.trigger["batch"]["message_ids"][0], {"mails": [m["to"] for m in mails]})
"""


def test_a_batch_run_is_held_to_the_time_limit_counted_from_its_start(project, runtime, producer, r, keys):
    """Given ``time_limit_ms: 1000`` and batches that wait up to 1,500 ms to fill: a lone message's batch runs after
    its wait (which the limit does not count), and a batch whose handler runs 4 s is stopped at 1 s, each of its
    messages failing on its own (dead-lettered here, ``max_retries: 0``)."""
    cfg, steps = project(
        {"send_step.py": SLOW_SENDER},
        "queues:\n  mails:\n    time_limit_ms: 1000\n    max_retries: 0\n    dead_letter_queue: mails.dlq\n",
    )
    runtime(cfg, steps, threads=4)
    p = producer(cfg, steps)
    [lone] = p.enqueue("mails", {"to": "lone"}, trace_id="lone")
    wait_for(lambda: r.hget(keys.state_group("runs"), lone), timeout=10, what="the lone batch run")
    assert [e.message_id for e in events(r, keys, "message.processed")] == [lone]
    t0 = time.monotonic()
    a, b = p.enqueue("mails", {"to": "a", "slow": True}, trace_id="slow")[0], p.enqueue("mails", {"to": "b"}, trace_id="slow")[0]
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("mails.dlq") == 2, timeout=10, what="both messages of the slow batch dead-lettered")
    assert time.monotonic() - t0 < 3.5, "the handler ran on past its time limit"
    dead = {e.id: e for e in store.list("mails.dlq")}
    assert set(dead) == {a, b} and all("time_limit_ms (1000 ms)" in e.error for e in dead.values())
    assert not r.hget(keys.state_group("runs"), a) and not r.hget(keys.state_group("runs"), b)


GROUP_SENDER = """
from iii_console import Step, queue
config = Step(name="SendMails", triggers=[queue("mails", batch={"max_size": 3, "max_wait_ms": 300})])
def handler(mails, ctx):
    gid = ctx.enqueue_group("parts", [{"to": m["to"]} for m in mails], then="parts.done")
    ctx.state.update("groups", "made", [{"type": "set", "path": [str(ctx.attempt)], "value": gid}])
    if ctx.attempt == 1:
        raise RuntimeError("the batch fails after making its group")
"""
GROUP_PART = """
from iii_console import Step, queue
config = Step(name="Part", triggers=[queue("parts")])
def handler(part, ctx):
    ctx.state.update("part-runs", part["to"], [{"type": "increment", "path": "n"}])
"""
GROUP_DONE = """
from iii_console import Step, queue
config = Step(name="Done", triggers=[queue("parts.done")])
def handler(result, ctx):
    ctx.state.set("completions", ctx.message_id, result)
"""


def test_a_batch_run_again_makes_its_group_once(project, runtime, producer, r, keys):
    """A batch's handler that makes a fan-in group and fails is run again with the same messages: the group's
    default id is the batch's (a digest of its message ids), so it is made once and each child runs once."""
    cfg, steps = project(
        {"send_step.py": GROUP_SENDER, "part_step.py": GROUP_PART, "done_step.py": GROUP_DONE},
        "queues:\n  mails:\n    max_retries: 1\n    retry_delay: 50\n",
    )
    p = producer(cfg, steps)
    for to in ("x", "y", "z"):
        p.enqueue("mails", {"to": to}, trace_id="t")
    runtime(cfg, steps, threads=4)
    wait_for(lambda: len(json.loads(r.hget(keys.state_group("groups"), "made") or "{}")) == 2, what="two batch runs")
    wait_for(lambda: r.hlen(keys.state_group("completions")) >= 1, what="the completion")
    time.sleep(0.5)
    made = json.loads(r.hget(keys.state_group("groups"), "made"))
    assert made["1"] == made["2"] and made["1"].startswith("batch-") and made["1"].endswith(".0")
    assert r.hlen(keys.state_group("completions")) == 1
    runs = {k.decode(): json.loads(v)["n"] for k, v in r.hgetall(keys.state_group("part-runs")).items()}
    assert runs == {"x": 1, "y": 1, "z": 1}
