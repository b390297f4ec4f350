"""Queues on real Redis with in-process workers: fan-out, competing consumers,
retries, dead letters, priority, and the stock-Dramatiq weak spots we close."""

from __future__ import annotations

import itertools
import uuid

import pytest

from iii_console.adapters.queue.broker import PREFETCH_MAX_FACTOR
from iii_console.core.dlq import DeadLetterStore

from ..helpers import events, events_once, recorder, runs, wait_for


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_enqueue_fans_out_one_copy_to_every_subscribed_step(project, runtime, producer, r, keys):
    cfg, steps = project({"a_step.py": recorder("A"), "b_step.py": recorder("B"), "c_step.py": recorder("C", topic="other")})
    runtime(cfg, steps)
    ids = producer(cfg, steps).enqueue("jobs", {"k": "m1"}, trace_id="t1")
    assert len(ids) == 2
    wait_for(lambda: runs(r, keys, "A").get("m1") == 1 and runs(r, keys, "B").get("m1") == 1, what="both copies processed")
    assert runs(r, keys, "C") == {}
    processed = events_once(r, keys, "message.processed", 2)
    assert sorted(e.step for e in processed) == ["A", "B"] and {e.trace_id for e in processed} == {"t1"}


def test_two_workers_share_a_topic_and_each_message_runs_once(project, runtime, producer, r, keys):
    cfg, steps = project({"a_step.py": recorder("A", extra="import time; time.sleep(0.01)")})
    w1, w2 = runtime(cfg, steps, threads=2), runtime(cfg, steps, threads=2)
    p = producer(cfg, steps)
    for i in range(60):
        p.enqueue("jobs", {"k": f"m{i}"}, trace_id=f"t{i}")
    wait_for(lambda: len(runs(r, keys, "A")) == 60, what="60 messages processed")
    assert set(runs(r, keys, "A").values()) == {1}
    by_worker = {e.worker for e in events_once(r, keys, "message.processed", 60)}
    assert by_worker == {w1.services.name, w2.services.name}


FLAKY = """
from iii_console import Step, queue
config = Step(name="Flaky", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "Flaky", [{"type": "increment", "path": data["k"]}])
    raise ValueError("boom " + data["k"])
"""


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_failing_message_is_retried_max_retries_times_with_delay_then_dead_lettered(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"flaky_step.py": FLAKY},
        """
        queues:
          jobs:
            max_retries: 2
            retry_delay: 300
            backoff: exponential
            dead_letter_queue: jobs.dlq
    """,
    )
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("jobs", {"k": "m1", "secret": "s3"}, trace_id="trace-x")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("jobs.dlq") == 1, what="dead letter")
    assert runs(r, keys, "Flaky") == {"m1": 3}
    # On RabbitMQ the events go through the process's buffer after the settle: wait for them.
    started = events_once(r, keys, "message.started", 3, where=lambda e: e.message_id == mid)
    assert [e.attempt for e in started] == [1, 2, 3]
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(started)]
    assert gaps[0] >= 300 and gaps[1] >= 600, gaps  # exponential: 300 ms, then 600 ms
    retrying = events_once(r, keys, "message.retrying", 2)
    assert [e.data["delay_ms"] for e in retrying] == [300, 600]
    [entry] = store.list("jobs.dlq")
    assert entry.id == mid and entry.attempts == 3 and entry.trace_id == "trace-x"
    assert entry.error == "ValueError: boom m1" and "raise ValueError" in entry.traceback
    assert entry.data == {"k": "m1", "secret": "s3"} and entry.message["actor_name"]
    failed = events_once(r, keys, "message.failed", 3, where=lambda e: e.message_id == mid)
    # first failure: stamped between the first attempt's failed and retrying events; last: at the third failure
    assert failed[0].ts <= entry.first_failure_ms <= retrying[0].ts and entry.last_failure_ms >= failed[-1].ts
    # Kept until purged: nothing of the store expires.
    assert r.ttl(keys.dlq("jobs.dlq")) == -1 and r.ttl(keys.dlq_entries("jobs.dlq")) == -1
    [dead] = events_once(r, keys, "message.dead_lettered", 1)
    assert dead.message_id == mid and dead.data["dlq"] == "jobs.dlq"
    # Nothing of the message is left in the queues.
    assert not [k for k in r.scan_iter(match=f"{keys.dramatiq_namespace}:jobs--*") if not k.endswith(b".wake")]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_failing_subscriber_is_retried_and_dead_lettered_alone(project, runtime, producer, r, keys):
    """Fan-out copies are independent: the failing step's copy is retried and
    dead-lettered on its own, and the step that succeeded runs exactly once."""
    cfg, steps = project(
        {"a_step.py": recorder("A"), "flaky_step.py": FLAKY},
        "queues:\n  jobs:\n    max_retries: 2\n    retry_delay: 50\n    dead_letter_queue: jobs.dlq\n",
    )
    runtime(cfg, steps)
    ids = producer(cfg, steps).enqueue("jobs", {"k": "m1"}, trace_id="t1")
    assert len(ids) == 2 and len(set(ids)) == 2
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("jobs.dlq") == 1, what="the failing copy dead-lettered")
    # The copies run independently: A's may finish after Flaky's last attempt.
    wait_for(lambda: runs(r, keys, "A") != {}, what="A's copy run")
    assert runs(r, keys, "A") == {"m1": 1} and runs(r, keys, "Flaky") == {"m1": 3}
    [entry] = store.list("jobs.dlq")
    assert entry.step == "Flaky" and entry.attempts == 3
    started = events_once(r, keys, "message.started", 4)
    assert sorted((e.step, e.attempt) for e in started) == [("A", 1), ("Flaky", 1), ("Flaky", 2), ("Flaky", 3)]
    assert [e.step for e in events(r, keys, "message.processed")] == ["A"]


@pytest.mark.parametrize("backoff,delays", [("fixed", [200, 200, 200]), ("exponential", [200, 400, 800])])
def test_retry_delays_follow_the_queues_backoff(project, runtime, producer, r, keys, backoff, delays):
    cfg, steps = project(
        {"flaky_step.py": FLAKY}, f"queues:\n  jobs:\n    max_retries: 3\n    retry_delay: 200\n    backoff: {backoff}\n"
    )
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("jobs", {"k": "m1"}, trace_id="t1")
    wait_for(lambda: DeadLetterStore(r, keys).count("dead-letters") == 1, what="dead letter")
    retrying = events_once(r, keys, "message.retrying", 3, where=lambda e: e.message_id == mid)
    assert [e.data["delay_ms"] for e in retrying] == delays
    assert [e.attempt for e in retrying] == [2, 3, 4]  # the attempt being scheduled
    started = [e for e in events(r, keys, "message.started") if e.message_id == mid]
    assert [e.attempt for e in started] == [1, 2, 3, 4]  # max_retries 3: three retries after the first attempt
    # Each retry started no earlier than its delay after the failure that scheduled it.
    waited = [s.ts - f.ts for f, s in zip(retrying, started[1:])]
    assert all(w >= d for w, d in zip(waited, delays)), (waited, delays)


CONFIGURED = """
from iii_console import Step, queue
config = Step(name="{name}", triggers=[queue("{topic}")])
def handler(data, ctx):
    ctx.state.update("runs", "{name}", [{{"type": "increment", "path": data["k"]}}])
    raise ValueError("boom")
"""


def test_unlisted_topics_take_default_and_a_partial_entry_inherits_the_rest(project, runtime, producer, r, keys):
    cfg, steps = project(
        {
            "plain_step.py": CONFIGURED.format(name="Plain", topic="plain"),
            "partial_step.py": CONFIGURED.format(name="Partial", topic="partial"),
        },
        """
        queues:
          default:
            max_retries: 1
            retry_delay: 20
            backoff: fixed
            dead_letter_queue: all-dead
          partial:
            dead_letter_queue: partial.dlq
    """,
    )
    runtime(cfg, steps)
    p = producer(cfg, steps)
    p.enqueue("plain", {"k": "m"}, trace_id="t")
    p.enqueue("partial", {"k": "m"}, trace_id="t")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("all-dead") == 1 and store.count("partial.dlq") == 1, what="one dead letter in each DLQ")
    assert runs(r, keys, "Plain") == {"m": 2} and runs(r, keys, "Partial") == {"m": 2}  # both: max_retries 1 from default
    assert [e.step for e in store.list("all-dead")] == ["Plain"] and [e.step for e in store.list("partial.dlq")] == ["Partial"]
    assert {e.data["delay_ms"] for e in events(r, keys, "message.retrying")} == {20}


GAUGED = """
import time
from iii_console import Step, queue
config = Step(name="{name}", triggers=[queue("{topic}")])
ENTER = ("local n = redis.call('INCR', KEYS[1]); "
         "if n > tonumber(redis.call('GET', KEYS[2]) or 0) then redis.call('SET', KEYS[2], n) end; return n")
def handler(data, ctx):
    from iii_console.runtime.services import redis_client
    r = redis_client(data["redis"])
    r.eval(ENTER, 2, "now:{topic}", "peak:{topic}")
    time.sleep(0.03)
    r.decr("now:{topic}")
    r.incr("done:{topic}")
    r.close()
"""


def test_each_topics_concurrency_holds_in_a_worker_process(project, runtime, producer, r, keys, redis_url):
    """Measured in Redis from inside the handlers: a topic with concurrency 2 never
    runs more than 2 at once however many threads the process has, and reaches 2;
    another topic's limit is its own."""
    cfg, steps = project(
        {"a_step.py": GAUGED.format(name="A", topic="two"), "b_step.py": GAUGED.format(name="B", topic="three")},
        "queues:\n  two:\n    concurrency: 2\n  three:\n    concurrency: 3\n",
    )
    runtime(cfg, steps, threads=8)
    p = producer(cfg, steps)
    for _i in range(30):
        p.enqueue("two", {"redis": redis_url}, trace_id="t")
        p.enqueue("three", {"redis": redis_url}, trace_id="t")
    wait_for(lambda: r.get("done:two") == b"30" and r.get("done:three") == b"30", timeout=30, what="all done")
    assert (int(r.get("peak:two")), int(r.get("peak:three"))) == (2, 3)


WEIRD = """
from iii_console import Step, queue
config = Step(name="Weird", triggers=[queue("jobs")])
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no description")
def handler(data, ctx):
    ctx.state.update("runs", "Weird", [{"type": "increment", "path": data["k"]}])
    if data.get("unprintable"):
        raise Unprintable()
    raise ValueError("boom")
"""


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_an_exception_that_cannot_be_printed_is_still_retried_and_dead_lettered(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"weird_step.py": WEIRD}, "queues:\n  jobs:\n    max_retries: 1\n    retry_delay: 10\n    dead_letter_queue: jobs.dlq\n"
    )
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("jobs", {"k": "m1", "unprintable": True}, trace_id="t1")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("jobs.dlq") == 1, what="dead letter")
    assert runs(r, keys, "Weird") == {"m1": 2}
    [entry] = store.list("jobs.dlq")
    assert (
        entry.id == mid
        and entry.attempts == 2
        and entry.error.startswith("Unprintable: ")
        and "raise Unprintable" in entry.traceback
    )


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_failed_message_the_retry_policy_cannot_decide_on_is_dead_lettered_not_acked(
    project, runtime, producer, r, keys, monkeypatch
):
    """Fault injection: the retry policy itself raises. Dramatiq only logs a
    middleware's exception, so without a decision the failed message would be
    acked as if it had succeeded; it goes to its dead-letter queue instead."""
    from iii_console.adapters.queue.middleware import RetryPolicy

    def broken(self, broker, message, *, result=None, exception=None):
        raise RuntimeError("policy bug")

    monkeypatch.setattr(RetryPolicy, "after_process_message", broken)
    cfg, steps = project({"weird_step.py": WEIRD}, "queues:\n  jobs:\n    dead_letter_queue: jobs.dlq\n")
    runtime(cfg, steps)
    p = producer(cfg, steps)
    [bad] = p.enqueue("jobs", {"k": "m1"}, trace_id="t1")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("jobs.dlq") == 1, what="dead letter")
    [entry] = store.list("jobs.dlq")
    assert (
        entry.id == bad
        and entry.trace_id == "t1"
        and entry.error.startswith("ValueError: boom")
        and "raise ValueError" in entry.traceback
    )
    [dead] = events_once(r, keys, "message.dead_lettered", 1)
    assert dead.message_id == bad and dead.step == "Weird"
    assert runs(r, keys, "Weird") == {"m1": 1}


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_invalid_input_goes_straight_to_the_dead_letter_queue(project, runtime, producer, r, keys):
    cfg, steps = project(
        {
            "typed_step.py": """
        from pydantic import BaseModel
        from iii_console import Step, queue
        class Job(BaseModel):
            n: int
        config = Step(name="Typed", triggers=[queue("jobs", input=Job)])
        def handler(job, ctx):
            ctx.state.set("runs", "Typed", {"n": job.n})
    """
        },
        "queues:\n  default:\n    max_retries: 5\n    retry_delay: 50\n",
    )
    runtime(cfg, steps)
    p = producer(cfg, steps)
    p.enqueue("jobs", {"n": "not a number"}, trace_id="bad")
    p.enqueue("jobs", {"n": 7}, trace_id="good")
    store = DeadLetterStore(r, keys)
    wait_for(
        lambda: store.count("dead-letters") == 1 and r.hget(keys.state_group("runs"), "Typed"), what="dead letter and good run"
    )
    [entry] = store.list()
    assert entry.attempts == 1 and "ValidationError" in entry.error and entry.trace_id == "bad"


PRIO = """
import time
from iii_console import Step, queue
config = Step(name="Ordered", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "order", [{"type": "merge", "value": {data["k"]: time.monotonic_ns()}}])
    time.sleep(0.005)
"""


def _order(r, keys) -> dict[str, int]:
    return runs(r, keys, "order")


def test_high_priority_message_overtakes_a_waiting_backlog(project, runtime, producer, r, keys):
    cfg, steps = project({"ordered_step.py": PRIO}, "queues:\n  jobs:\n    concurrency: 1\n")
    p = producer(cfg, steps)
    for i in range(300):
        p.enqueue("jobs", {"k": f"n{i}"}, trace_id="n")
    p.enqueue("jobs", {"k": "urgent"}, trace_id="h", priority="high")
    runtime(cfg, steps, threads=1)
    order = wait_for(lambda: (o := _order(r, keys)) and "urgent" in o and o, what="urgent processed")
    before = sum(1 for k, v in order.items() if k != "urgent" and v < order["urgent"])
    # Only what the single worker had already fetched may run first: its prefetch (2 x threads,
    # up to PREFETCH_MAX_FACTOR times that for a handler this quick) and the one it was running.
    assert before <= 2 * PREFETCH_MAX_FACTOR + 1, before


def test_high_priority_message_sent_into_a_running_backlog_runs_next(project, runtime, producer, r, keys):
    """The backlog is being worked through when the high message arrives: it
    must not wait behind the ~200 normal ones still in Redis."""
    import time

    cfg, steps = project({"ordered_step.py": PRIO}, "queues:\n  jobs:\n    concurrency: 1\n")
    runtime(cfg, steps, threads=1)
    p = producer(cfg, steps)
    for i in range(200):
        p.enqueue("jobs", {"k": f"n{i}"}, trace_id="n")
    wait_for(lambda: len(_order(r, keys)) >= 10, what="the backlog being worked through")
    sent = time.monotonic_ns()
    p.enqueue("jobs", {"k": "urgent"}, trace_id="h", priority="high")
    order = wait_for(lambda: (o := _order(r, keys)) and "urgent" in o and o, what="urgent processed")
    ahead = sum(1 for k, v in order.items() if k != "urgent" and sent < v < order["urgent"])
    assert ahead <= 2 * PREFETCH_MAX_FACTOR + 1, ahead  # the running one and what was already fetched (its prefetch)
    assert len(order) < 100  # and the backlog was far from done


@pytest.mark.parametrize("running", [False, True], ids=["backlog-then-worker", "worker-then-backlog"])
def test_low_priority_messages_wait_behind_the_normal_backlog(project, runtime, producer, r, keys, running):
    """Low messages enqueued among a normal backlog run after every normal
    message, whether the worker starts on the backlog or was running (busy on a
    slow message while the backlog built up). The handler does not sleep, so
    the worker thread often finishes before the normal consumer has fetched the
    next one: a low message fetched early would run then."""
    cfg, steps = project(
        {"ordered_step.py": PRIO.replace("time.sleep(0.005)", "data.get('sleep') and time.sleep(data['sleep'])")},
        "queues:\n  jobs:\n    concurrency: 1\n",
    )
    p = producer(cfg, steps)
    if running:
        runtime(cfg, steps, threads=1)
        p.enqueue("jobs", {"k": "busy", "sleep": 2}, trace_id="b")
        wait_for(lambda: "busy" in _order(r, keys), what="the worker busy")
    for i in range(200):
        p.enqueue("jobs", {"k": f"n{i}"}, trace_id="n")
        if i % 10 == 9:
            p.enqueue("jobs", {"k": f"low{i}"}, trace_id="l", priority="low")
    if running:
        assert list(_order(r, keys)) == ["busy"], "the backlog must be complete before the worker is free"
    else:
        runtime(cfg, steps, threads=1)
    order = wait_for(
        lambda: (o := _order(r, keys)) and len([k for k in o if k != "busy"]) == 220 and o, timeout=60, what="all 220 processed"
    )
    first_low = min(v for k, v in order.items() if k.startswith("low"))
    overtaken = sorted(k for k, v in order.items() if k.startswith("n") and v > first_low)
    assert overtaken == [], overtaken


def test_a_held_back_fetch_marks_the_higher_queue_and_the_fetch_that_drains_it_wakes_the_lower(r, keys):
    """A low consumer refused for a high backlog is not left to poll: the fetch
    that empties the high queue drops one token per held-back worker on the low
    queue's wake list, and not before."""
    from iii_console.adapters.queue.scripts import Scripts

    sc, ns = Scripts(r), keys.dramatiq_namespace
    high, normal, low = "t--S--high", "t--S--normal", "t--S--low"
    r.rpush(keys.queue(high), "a", "b")
    r.hset(f"{keys.queue(high)}.msgs", mapping={"a": "{}", "b": "{}"})
    assert sc.fetch(args=[ns, low, "w1", 4, high, normal]) == -1
    assert sc.fetch(args=[ns, low, "w2", 4, high, normal]) == -1
    assert sc.fetch(args=[ns, low, "w2", 4, high, normal]) == -1  # the same worker again: one token for it
    assert len(sc.fetch(args=[ns, high, "w3", 1])) == 3  # "b" is still waiting
    assert r.llen(keys.queue_wake(low)) == 0
    assert len(sc.fetch(args=[ns, high, "w3", 1])) == 3  # took the last one
    assert r.llen(keys.queue_wake(low)) == 2
    assert not r.exists(keys.queue_held(high))
    assert sc.fetch(args=[ns, low, "w1", 4, high, normal]) == []  # nothing left ahead of it


@pytest.mark.slow
def test_an_idle_worker_fetches_only_when_woken_and_picks_up_every_priority(project, runtime, producer, r, keys, monkeypatch):
    """Idle consumers wait on the worker's wake hub (one BLPOP over all their
    wake lists) instead of each fetching twice a second, and a message on any
    of the queues still starts at once. The safety-net refetch is pushed out
    of the test's reach, so only the hub can start them."""
    import time

    from iii_console.adapters.queue import broker as broker_mod

    monkeypatch.setattr(broker_mod, "IDLE_REFETCH_S", 60.0)
    cfg, steps = project({"ordered_step.py": PRIO}, "queues:\n  jobs:\n    concurrency: 2\n")
    rt = runtime(cfg, steps, threads=2)
    hub = rt.broker.wake_hub
    wait_for(lambda: len(hub._waiters) >= 3, what="the three priority queues waiting on the hub")
    calls = []
    fetch = rt.broker.iii_scripts.fetch
    rt.broker.iii_scripts.fetch = lambda *a, **kw: calls.append(1) or fetch(*a, **kw)
    time.sleep(1.5)  # an observation window: three consumers used to fetch 9 times in it
    assert len(calls) <= 1, f"{len(calls)} fetches by idle consumers in 1.5 s"
    p = producer(cfg, steps)
    for prio in ("low", "normal", "high"):  # within 20 s, where only a refetch after 60 s would find it unwoken
        p.enqueue("jobs", {"k": prio}, trace_id=prio, priority=prio)
        wait_for(lambda prio=prio: prio in _order(r, keys), timeout=20, what=f"the {prio} message started")


def test_enqueue_with_delay_waits_before_running(project, runtime, producer, r, keys):
    cfg, steps = project({"a_step.py": recorder("A")})
    runtime(cfg, steps)
    p = producer(cfg, steps)
    import time

    sent_ms = int(time.time() * 1000)
    p.enqueue("jobs", {"k": "later"}, trace_id="t", delay_ms=400)
    p.enqueue("jobs", {"k": "now"}, trace_id="t")
    [later] = wait_for(
        lambda: [e for e in events(r, keys, "message.enqueued") if e.data["payload"]["k"] == "later"], what="enqueued event"
    )
    done = wait_for(
        lambda: [e for e in events(r, keys, "message.started") if e.message_id == later.message_id], what="delayed message"
    )
    first = next(e for e in events(r, keys, "message.started") if e.message_id != later.message_id)
    assert done[0].ts - sent_ms >= 400
    assert first.ts < done[0].ts  # the undelayed message sent after it ran first


def _garbage(r, keys, queue: str) -> str:
    rid = str(uuid.uuid4())
    r.hset(f"{keys.dramatiq_namespace}:{queue}.msgs", rid, b"\xff\xfe not a dramatiq message")
    r.rpush(f"{keys.dramatiq_namespace}:{queue}", rid)
    return rid


def test_a_queued_id_whose_body_is_gone_is_dropped_and_the_rest_run(project, runtime, producer, r, keys):
    """Given an id in a step's queue whose body was purged, then the worker drops it (out of its
    in-flight set, nothing written for it) and runs the messages around it."""
    cfg, steps = project({"a_step.py": recorder("A")})
    p = producer(cfg, steps)
    p.enqueue("jobs", {"k": "before"}, trace_id="t")
    ns, queue = keys.dramatiq_namespace, "jobs--A--normal"
    dangling = str(uuid.uuid4())
    r.rpush(f"{ns}:{queue}", dangling)  # no body in {queue}.msgs
    for i in range(3):
        p.enqueue("jobs", {"k": f"after{i}"}, trace_id="t")
    runtime(cfg, steps)
    wait_for(lambda: len(runs(r, keys, "A")) == 4, what="the messages around it processed")
    acks = [k for k in r.scan_iter(match=f"{ns}:__acks__.*.{queue}")]
    wait_for(lambda: not any(r.sismember(k, dangling) for k in acks), what="the dangling id out of the in-flight set")
    assert dangling.encode() not in r.lrange(f"{ns}:{queue}", 0, -1)
    assert not r.hexists(f"{ns}:{queue}.deliveries", dangling)
    assert len(events_once(r, keys, "message.processed", 4)) == 4  # none for the dangling id


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_undecodable_message_is_quarantined_and_the_rest_of_the_batch_flows(project, runtime, producer, r, keys, broker, request):
    """Given a body that is not a message between good ones in a step's queue, then it lands in the quarantine
    dead-letter queue with its raw bytes and one message.dead_lettered event, and the messages around it run. On
    RabbitMQ the consumer rejects it and RabbitMQ dead-letters it to the ingester, which writes the same entry."""
    cfg, steps = project({"a_step.py": recorder("A")})
    p = producer(cfg, steps)
    p.enqueue("jobs", {"k": "before"}, trace_id="t")  # (on RabbitMQ this declares the queues)
    if broker:
        import pika

        node = request.getfixturevalue("rabbit_node")
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", f"{cfg.rabbitmq.prefix}.jobs--A--normal", b"\xff\xfe not a dramatiq message", mandatory=True)
        conn.close()
    else:
        rid = _garbage(r, keys, "jobs--A--normal")
    for i in range(5):
        p.enqueue("jobs", {"k": f"after{i}"}, trace_id="t")
    runtime(cfg, steps)
    wait_for(lambda: len(runs(r, keys, "A")) == 6, what="all valid messages processed")
    store = DeadLetterStore(r, keys)
    [entry] = wait_for(lambda: store.list("quarantine"), what="the quarantined body")
    assert entry.id.startswith("undecodable-") and "undecodable" in entry.error and "not a dramatiq message" in entry.raw
    if not broker:
        assert entry.id == f"undecodable-{rid}"
    assert entry.step == "A" and entry.topic == "jobs"
    # Written with the entry, in the one shape every dead letter's event has; the entry id names it.
    [dead] = events_once(r, keys, "message.dead_lettered", 1)
    assert dead.data == {"dlq": "quarantine", "attempts": 0, "entry": entry.id} and dead.error == entry.error
    assert (dead.message_id, dead.step, dead.topic, dead.queue) == (None, "A", "jobs", "jobs--A--normal")


def test_failed_retry_write_keeps_the_message_until_redis_accepts_it(project, runtime, producer, r, keys, monkeypatch):
    """A retry whose write fails (here: the delay queue's key has the wrong type)
    must not be acked away; once Redis accepts writes again, the retry happens."""
    import dramatiq.worker as dw

    monkeypatch.setattr(dw, "POST_PROCESS_MESSAGE_RETRY_DELAY_SECS", 0.2)
    cfg, steps = project({"flaky_step.py": FLAKY}, "queues:\n  jobs:\n    max_retries: 1\n    retry_delay: 10\n")
    bad_key = f"{keys.dramatiq_namespace}:jobs--Flaky--normal.delayed"
    r.set(bad_key, "wrong type")
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("jobs", {"k": "m1"}, trace_id="t")
    wait_for(lambda: runs(r, keys, "Flaky").get("m1") == 1, what="first attempt")
    import time

    time.sleep(0.6)  # the settle keeps failing meanwhile
    in_flight = [k for k in r.scan_iter(match=f"{keys.dramatiq_namespace}:__acks__.*jobs--Flaky--normal") if r.scard(k)]
    assert in_flight, "message must still be in flight, not acked away"
    r.delete(bad_key)
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("dead-letters") == 1, what="retry then dead letter after Redis recovers")
    assert runs(r, keys, "Flaky") == {"m1": 2}
    assert store.get(mid).attempts == 2


def test_a_message_no_actor_can_run_is_dead_lettered_in_its_topics_queue(project, runtime, producer, r, keys):
    """A well-formed message naming an actor no worker declares (say, written by
    an older version) cannot run; it goes to the topic's dead-letter queue, and
    the queue flows on."""
    from dramatiq.message import Message

    cfg, steps = project({"a_step.py": recorder("A")}, "queues:\n  jobs:\n    dead_letter_queue: jobs.dlq\n")
    rid = str(uuid.uuid4())
    stray = Message(
        queue_name="jobs--A--normal",
        actor_name="Gone:jobs:normal",
        args=({"k": "x"},),
        kwargs={},
        options={"topic": "jobs", "trace_id": "t-stray", "redis_message_id": rid},
    )
    r.hset(f"{keys.dramatiq_namespace}:jobs--A--normal.msgs", rid, stray.encode())
    r.rpush(f"{keys.dramatiq_namespace}:jobs--A--normal", rid)
    producer(cfg, steps).enqueue("jobs", {"k": "after"}, trace_id="t")
    runtime(cfg, steps)
    store = DeadLetterStore(r, keys)
    wait_for(
        lambda: store.count("jobs.dlq") == 1 and runs(r, keys, "A") == {"after": 1}, what="stray dead-lettered, queue flowing"
    )
    [entry] = store.list("jobs.dlq")
    assert entry.id == stray.message_id and entry.trace_id == "t-stray" and "Gone:jobs:normal" in entry.error


# -- The stock weak spots: one scenario, run on stock Dramatiq and on ours ------
#
# Each test below builds either stock Dramatiq (``RedisBroker`` + ``Retries``) or
# our broker and middleware around the same bare actor, injects the same fault
# and asserts the same outcome. The stock run is expected to fail that
# assertion (strict xfail: should stock ever pass, the test fails and says so).

STOCK = pytest.param("stock", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason="the stock weak spot"))


def _bare_broker(impl: str, client, *, max_retries: int = 1):
    """A broker with one actor-less setup: stock RedisBroker + Retries, or ours."""
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import CurrentMessage, Retries

    from iii_console.adapters.queue.broker import IIIBroker
    from iii_console.adapters.queue.middleware import LifecycleEvents, RetryPolicy
    from iii_console.core.config import Config
    from iii_console.core.emitter import null_emitter
    from iii_console.core.keys import Keys

    if impl == "stock":
        return RedisBroker(
            client=client, namespace="stock", middleware=[Retries(max_retries=max_retries, min_backoff=10, max_backoff=10)]
        )
    cfg = Config(queues={"default": {"max_retries": max_retries, "retry_delay": 10}})
    emitter = null_emitter()
    return IIIBroker(
        client=client,
        keys=Keys(),
        emitter=emitter,
        middleware=[CurrentMessage(), RetryPolicy(cfg, emitter), LifecycleEvents(emitter)],
    )


def _declare(broker, fn, impl: str):
    import dramatiq

    return dramatiq.Actor(
        fn, broker=broker, actor_name="work", queue_name="q", priority=0, options={"max_retries": 1} if impl == "stock" else {}
    )


def _dead_lettered(impl: str, r, keys, ns: str, rid: str) -> bool:
    if impl == "stock":  # stock's dead letters: the queue's .XQ set, by redis message id
        return r.zscore(f"{ns}:q.XQ", rid) is not None
    return DeadLetterStore(r, keys).get(f"undecodable-{rid}") is not None


@pytest.mark.parametrize("impl", [STOCK, "iii"])
def test_undecodable_message_neither_strands_its_batch_nor_escapes_the_dead_letters(impl, redis_url, r, keys):
    """A bad body fetched in the same batch as valid messages: every valid one
    runs and the bad one is dead-lettered. Stock Dramatiq raises out of the
    consumer, drops the fetched batch (stranded in the live worker's in-flight
    set) and never dead-letters the bad body."""
    import dramatiq

    from iii_console.runtime.services import redis_client

    client = redis_client(redis_url)
    broker = _bare_broker(impl, client)
    seen: list[int] = []
    _declare(broker, seen.append, impl)
    ns = broker.namespace
    rid = str(uuid.uuid4())
    client.hset(f"{ns}:q.msgs", rid, b"\xff\xfe not a dramatiq message")
    client.rpush(f"{ns}:q", rid)
    for i in range(5):
        broker.get_actor("work").send(i)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)  # prefetch 2: the bad body shares a batch
    worker.start()
    try:
        wait_for(lambda: sorted(seen) == [0, 1, 2, 3, 4], timeout=10, what="every valid message processed")
        wait_for(lambda: _dead_lettered(impl, r, keys, ns, rid), timeout=5, what="the bad message dead-lettered")
        stranded = sum(r.scard(k) for k in r.scan_iter(match=f"{ns}:__acks__.*"))
        assert stranded == 0
    finally:
        worker.stop(timeout=2000)
        broker.close()
        client.close()


@pytest.mark.parametrize("fault", ["connection-drop", "write-refused"])
@pytest.mark.parametrize("impl", [STOCK, "iii"])
def test_a_retry_whose_write_fails_is_retried_not_lost(impl, fault, redis_server, redis_url, r, monkeypatch):
    """The handler fails once; at that moment the write of its retry fails,
    either because the link to Redis drops for 2 s (a real TCP cut) or because
    Redis refuses the write. The message must still run again once Redis takes
    writes. Stock Retries swallows the failed re-enqueue and acks: the message
    is gone."""
    import threading
    import time

    import dramatiq
    import dramatiq.worker as dw

    from iii_console.runtime.services import redis_client

    from ..tcpproxy import TcpProxy

    monkeypatch.setattr(dw, "POST_PROCESS_MESSAGE_RETRY_DELAY_SECS", 0.2)  # both: retry the settle promptly
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    client = redis_client(proxy.url)
    broker = _bare_broker(impl, client)
    ns = broker.namespace
    # Where a retry is written: stock's delay queue body hash, our queue's delayed set.
    bad_key = f"{ns}:q.DQ.msgs" if impl == "stock" else f"{ns}:q.delayed"
    calls: list[float] = []

    def fail_now() -> None:
        if fault == "connection-drop":
            proxy.cut(2.0)
        else:
            r.set(bad_key, "not a hash")  # WRONGTYPE for the retry's write until removed
            threading.Timer(1.0, r.delete, args=[bad_key]).start()

    def work() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            fail_now()
            raise ValueError("boom")

    _declare(broker, work, impl)
    broker.get_actor("work").send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: calls, what="first attempt")

        def held() -> bool:  # the body is still somewhere in Redis: queued, in flight or delayed
            return any(r.type(k) == b"hash" and r.hlen(k) for k in (f"{ns}:q.msgs", f"{ns}:q.DQ.msgs"))

        # Either the retry runs, or the message is gone from Redis with no retry run: lost,
        # which is decided as soon as it happens rather than by waiting out a timeout.
        wait_for(
            lambda: len(calls) == 2 or (time.monotonic() - calls[0] > 1.5 and not held()),
            timeout=15,
            what="the retry, or the message's loss",
        )
        assert len(calls) == 2, "the failed attempt was acked and its retry never written: the message is lost"
        wait_for(lambda: not r.hlen(f"{ns}:q.msgs") and not r.exists(f"{ns}:q.DQ.msgs"), what="the retried message settled")
    finally:
        worker.stop(timeout=2000)
        broker.close()
        client.close()
        proxy.close()


ASYNC_MULTI = """
import asyncio
from iii_console import Step, queue
config = Step(name="Both", triggers=[queue("a"), queue("b")], enqueues=["c"])
async def handler(data, ctx):
    await asyncio.sleep(0)
    await ctx.state.update("runs", "Both", [{"type": "increment", "path": ctx.trigger["topic"] + ":" + data["k"]}])
    await ctx.enqueue("c", {"k": data["k"], "attempt": ctx.attempt})
"""

CTX_ONLY = """
from iii_console import Step, queue
config = Step(name="Sink", triggers=[queue("c")])
def handler(ctx):
    ctx.state.set("runs", "Sink", {"trace": ctx.trace_id, "message_id": ctx.message_id})
"""


def test_async_handler_with_several_triggers_enqueues_on_the_same_trace(project, runtime, producer, r, keys):
    cfg, steps = project({"both_step.py": ASYNC_MULTI, "sink_step.py": CTX_ONLY})
    runtime(cfg, steps)
    p = producer(cfg, steps)
    p.enqueue("a", {"k": "x"}, trace_id="trace-a")
    p.enqueue("b", {"k": "y"}, trace_id="trace-b")
    wait_for(lambda: runs(r, keys, "Both") == {"a:x": 1, "b:y": 1}, what="both topics handled")
    sink = wait_for(lambda: runs(r, keys, "Sink"), what="downstream step ran")
    assert sink["trace"] in ("trace-a", "trace-b") and sink["message_id"]
    enq = events_once(r, keys, "message.enqueued", 2, where=lambda e: e.topic == "c")
    assert sorted(e.trace_id for e in enq) == ["trace-a", "trace-b"] and {e.data["source"] for e in enq} == {"Both"}


def test_tracebacks_start_at_the_step_not_the_framework(project, runtime, producer, r, keys):
    cfg, steps = project({"flaky_step.py": FLAKY}, "queues:\n  jobs:\n    max_retries: 0\n")
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("jobs", {"k": "m1"}, trace_id="t")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("dead-letters") == 1, what="dead letter")
    tb = store.list()[0].traceback
    frames = [line for line in tb.splitlines() if line.strip().startswith("File ")]
    assert frames and "flaky_step.py" in frames[0] and "dramatiq" not in tb and "runner.py" not in tb
