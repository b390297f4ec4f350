"""The RabbitMQ broker on a real node of our own (``rabbit_node``): quorum queues, delay queues,
dead-lettering into the Redis dead-letter store, strict priority, and real worker processes
killed under load. Redis still holds state, events and dead letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pika
import pytest

from iii_console.adapters.queue.producer import subscriptions_for
from iii_console.core.discovery import discover
from iii_console.core.dlq import DeadLetterStore
from iii_console.runtime.runner import StepRunner
from iii_console.runtime.services import Services

from ..helpers import events, events_once, make_project, rabbit_messages, ready, wait_for

RECORD = """
import time
from iii_console import Step, queue
config = Step(name="Rec", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "Rec", [{"type": "increment", "path": data["k"]}])
    if data.get("order"):
        import redis
        redis.Redis.from_url(data["order"]).rpush("order", data["k"])
    time.sleep(data.get("sleep", 0))
"""

FLAKY = """
from iii_console import Step, queue
config = Step(name="Flaky", triggers=[queue("flaky")])
def handler(data, ctx):
    n = ctx.state.update("runs", "Flaky", [{"type": "increment", "path": data["k"]}])
    if ctx.state.get("switch", "broken"):
        raise RuntimeError("still broken")
    if data.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
"""


@pytest.fixture
def rproject(tmp_path, redis_url, rabbit_node, rabbit_prefix):
    def build(steps: dict[str, str], config: str = ""):
        cfg = make_project(
            tmp_path,
            steps,
            f"broker: rabbitmq\nrabbitmq:\n  url: {rabbit_node.url}\n  prefix: {rabbit_prefix}\n" + config,
            redis_url=redis_url,
        )
        stepset = discover(cfg.steps_path)
        assert not stepset.errors, stepset.errors
        return cfg, stepset

    return build


def runs(r, keys, step):
    raw = r.hget(keys.state_group("runs"), step)
    return json.loads(raw) if raw else {}


def test_fan_out_to_quorum_queues_runs_each_step_once_with_its_events(
    rproject, runtime, producer, r, keys, rabbit_node, rabbit_prefix
):
    """Given two steps on one topic, when three messages are enqueued, then each step runs each once from its own quorum
    queue, and the stream has every copy's enqueued, started and processed events under that copy's id."""
    other = RECORD.replace('name="Rec"', 'name="Other"').replace('"Rec", [', '"Other", [')
    cfg, steps = rproject({"rec_step.py": RECORD, "other_step.py": other})
    p = producer(cfg, steps)
    ids = [p.enqueue("jobs", {"k": f"m{i}"}, trace_id=f"t{i}") for i in range(3)]
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_node.url))
    args = conn.channel().queue_declare(f"{rabbit_prefix}.jobs--Rec--normal", passive=True)
    conn.close()
    assert args.method.message_count == 3  # one publish, a copy in each step's queue
    runtime(cfg, steps)
    wait_for(lambda: runs(r, keys, "Rec") == runs(r, keys, "Other") == {"m0": 1, "m1": 1, "m2": 1}, what="every copy run once")
    every = {mid for pair in ids for mid in pair}
    assert len(every) == 6
    for kind in ("message.enqueued", "message.started", "message.processed"):
        got = events_once(r, keys, kind, 6)
        assert {e.message_id for e in got} == every, kind
    assert {e.step for e in events(r, keys, "message.processed")} == {"Rec", "Other"}


@pytest.mark.slow
def test_a_message_posted_over_http_is_processed_by_a_worker_process_on_rabbitmq(rproject, procs, r, keys, tmp_path):
    """Given iii-console with broker: rabbitmq, when a message is posted over HTTP, then a worker process runs it and the
    stream tells its story: http.received, message.enqueued, started, processed under one trace id."""
    import httpx

    api = """
from iii_console import Step, http
config = Step(name="Post", triggers=[http("POST", "/jobs")], enqueues=["jobs"])
def handler(req, ctx):
    ctx.enqueue("jobs", req.body)
    return {"status": 202, "body": {"trace": ctx.trace_id}}
"""
    rproject({"rec_step.py": RECORD, "post_step.py": api})
    app = procs(tmp_path, "--port", "0")
    url = app.banner.split(" on ", 1)[1].split(" with", 1)[0]
    resp = httpx.post(f"{url}/jobs", json={"k": "web"}, timeout=30)
    assert resp.status_code == 202, resp.text
    trace = resp.json()["trace"]
    wait_for(lambda: runs(r, keys, "Rec") == {"web": 1}, timeout=30, what="the posted message to run")
    [done] = events_once(r, keys, "message.processed", 1)
    assert done.trace_id == trace
    kinds = [e.type for e in events(r, keys) if e.trace_id == trace]
    assert kinds.index("message.enqueued") < kinds.index("message.started") < kinds.index("message.processed")


@pytest.mark.slow
def test_a_retry_waits_in_a_delay_queue_and_survives_the_worker_being_killed(
    rproject, procs, r, keys, rabbit_node, rabbit_prefix, tmp_path
):
    """Given a message that fails its first attempt with a 3 s retry delay, when its worker is SIGKILLed during the
    delay and a new one started, then the retry waits in the 3000 ms delay queue (not in a worker) and runs once."""
    rproject({"flaky_step.py": FLAKY}, "queues:\n  flaky:\n    retry_delay: 3000\n    backoff: fixed\n")
    worker = procs(tmp_path, "--role", "worker", "--processes", "1")
    svc = Services.open(
        __import__("iii_console.core.config", fromlist=["load_config"]).load_config(tmp_path / "iii-config.yaml"), "test"
    )
    try:
        StepRunner(svc, subscriptions_for(discover(tmp_path / "steps").steps)).producer.enqueue(
            "flaky", {"k": "a", "fail_first": True}, trace_id="t-retry"
        )
    finally:
        svc.close()
    [retrying] = events_once(r, keys, "message.retrying", 1)
    assert retrying.data["delay_ms"] == 3000
    assert ready(rabbit_node, f"{rabbit_prefix}.delay.3000") == 1
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(5)
    procs(tmp_path, "--role", "worker", "--processes", "1")
    wait_for(lambda: runs(r, keys, "Flaky") == {"a": 2}, timeout=20, what="the retry after the kill")
    [done] = events_once(r, keys, "message.processed", 1)
    assert done.attempt == 2 and done.trace_id == "t-retry"
    assert ready(rabbit_node, f"{rabbit_prefix}.delay.3000") == 0


@pytest.mark.slow
def test_a_poison_message_is_dead_lettered_with_its_traceback_and_replayed_once_from_the_cli(
    rproject, runtime, producer, r, keys, tmp_path
):
    """Given a handler that keeps failing, when a message runs out of retries, then its dead letter in Redis has error,
    traceback, attempts and trace id; once fixed, `iii-console dlq replay` puts it back and it runs once."""
    cfg, steps = rproject({"flaky_step.py": FLAKY}, "queues:\n  flaky:\n    max_retries: 1\n    retry_delay: 100\n")
    r.hset(keys.state_group("switch"), "broken", "true")
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("flaky", {"k": "p"}, trace_id="t-poison")
    [dead] = events_once(r, keys, "message.dead_lettered", 1)
    assert dead.message_id == mid and dead.trace_id == "t-poison"
    [entry] = DeadLetterStore(r, keys).list("dead-letters")
    assert entry.attempts == 2 and entry.trace_id == "t-poison" and "still broken" in entry.error
    assert "RuntimeError" in entry.traceback and "flaky_step.py" in entry.traceback
    assert runs(r, keys, "Flaky") == {"p": 2}
    r.hdel(keys.state_group("switch"), "broken")
    out = subprocess.run(
        [sys.executable, "-m", "iii_console", "dlq", "replay", entry.id, "--yes", "--config", str(tmp_path / "iii-config.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "replayed 1 of 1" in out.stderr
    wait_for(lambda: runs(r, keys, "Flaky") == {"p": 3}, what="the replayed message to run")
    events_once(r, keys, "message.processed", 1)
    assert DeadLetterStore(r, keys).count("dead-letters") == 0
    again = subprocess.run(
        [sys.executable, "-m", "iii_console", "dlq", "replay", entry.id, "--yes", "--config", str(tmp_path / "iii-config.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0 or "replayed 0" in again.stderr
    time.sleep(0.5)
    assert runs(r, keys, "Flaky") == {"p": 3}


HELD = """
import time
import redis
from iii_console import Step, queue
config = Step(name="Held", triggers=[queue("jobs")])
def handler(data, ctx):
    r = redis.Redis.from_url(data["url"])
    r.rpush("started", data["k"])
    deadline = time.monotonic() + 60
    while data.get("hold") and not r.exists("release") and time.monotonic() < deadline:
        time.sleep(0.02)
    r.rpush("finished", data["k"])
"""


def test_batched_acks_never_cover_a_delivery_still_running(rproject, runtime, producer, r, rabbit_node, rabbit_prefix, redis_url):
    """Given one held message ahead of 30 quick ones on a 4-thread worker, when the quick ones finish first, then their
    acks (batched, ``multiple`` below the lowest unsettled tag) leave exactly the held one unacked while it runs; once
    released it is acked too, nothing is left in the queue and every message ran once."""
    cfg, steps = rproject({"held_step.py": HELD}, "queues:\n  jobs:\n    concurrency: 4\nworkers:\n  threads: 4\n")
    p = producer(cfg, steps)
    p.enqueue("jobs", {"k": "held", "url": redis_url, "hold": True}, trace_id="t")
    for i in range(30):
        p.enqueue("jobs", {"k": f"q{i}", "url": redis_url}, trace_id="t")
    runtime(cfg, steps, threads=4)
    queue = f"{rabbit_prefix}.jobs--Held--normal"

    def count(column: str) -> int | None:
        return rabbit_messages(rabbit_node, rabbit_prefix, column).get(queue)

    wait_for(lambda: r.llen("finished") == 30, timeout=60, what="the 30 quick messages")
    assert b"held" in r.lrange("started", 0, -1) and b"held" not in r.lrange("finished", 0, -1)
    wait_for(lambda: count("messages_unacknowledged") == 1, timeout=30, what="every ack but the held message's")
    assert count("messages_unacknowledged") == 1 and b"held" not in r.lrange("finished", 0, -1)
    r.set("release", 1)
    wait_for(lambda: count("messages") == 0, timeout=30, what="the held message's ack")
    finished = sorted(x.decode() for x in r.lrange("finished", 0, -1))
    assert finished == sorted(["held", *(f"q{i}" for i in range(30))]), finished
    assert r.llen("started") == 31


def test_priority_is_strict_across_the_three_queues(rproject, runtime, producer, r, keys, redis_url):
    """Given 6 low, 6 normal and 6 high messages waiting, when one single-threaded worker starts, then every high one
    runs before any normal one is started and every normal one before any low one, but for the bound documented:
    at most one message per priority already handed to the worker (its prefetch of a held queue) may run early."""
    cfg, steps = rproject({"rec_step.py": RECORD}, "queues:\n  jobs:\n    concurrency: 1\nworkers:\n  threads: 1\n")
    p = producer(cfg, steps)
    for prio in ("low", "normal", "high"):
        for i in range(6):
            p.enqueue("jobs", {"k": f"{prio}{i}", "order": redis_url, "sleep": 0.02}, trace_id="t", priority=prio)
    runtime(cfg, steps, threads=1)
    order = wait_for(
        lambda: (got := [x.decode() for x in r.lrange("order", 0, -1)]) and len(got) == 18 and got,
        timeout=30,
        what="all 18 to run",
    )
    rank = {"high": 0, "normal": 1, "low": 2}
    seq = [rank[k.rstrip("0123456789")] for k in order]
    inversions = sum(1 for i in range(len(seq)) for j in range(i + 1, len(seq)) if seq[i] > seq[j])
    print(f"\nrun order: {' '.join(order)} ({inversions} inversions)")
    assert seq[:4] == [0, 0, 0, 0] and seq[-4:] == [2, 2, 2, 2], order
    assert inversions <= 4, order


@pytest.mark.slow
def test_a_message_that_kills_its_worker_is_dead_lettered_after_max_deliveries(rproject, procs, r, keys, tmp_path):
    """Given max_deliveries 2 and a handler that kills its worker process, then RabbitMQ's delivery limit dead-letters
    the message unrun after its second delivery, and the ingester writes its entry and event; the next message runs."""
    killer = """
import os
from iii_console import Step, queue
config = Step(name="Killer", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "Killer", [{"type": "increment", "path": data["k"]}])
    if data.get("die"):
        os._exit(9)
"""
    rproject({"killer_step.py": killer}, "queues:\n  jobs:\n    max_deliveries: 2\n")
    procs(tmp_path, "--role", "worker", "--processes", "1")
    from iii_console.core.config import load_config

    svc = Services.open(load_config(tmp_path / "iii-config.yaml"), "test")
    try:
        prod = StepRunner(svc, subscriptions_for(discover(tmp_path / "steps").steps)).producer
        [mid] = prod.enqueue("jobs", {"k": "poison", "die": True}, trace_id="t-poison")
        # Enqueued after: a message prefetched by a worker that dies counts a delivery too (docs/guarantees.md).
        [dead] = events_once(r, keys, "message.dead_lettered", 1, timeout=30)
        prod.enqueue("jobs", {"k": "fine"}, trace_id="t-fine")
    finally:
        svc.close()
    assert dead.message_id == mid and dead.trace_id == "t-poison" and dead.data["deliveries"] == 2
    [entry] = DeadLetterStore(r, keys).list("dead-letters")
    assert "delivered 2 times" in entry.error and entry.message is not None
    wait_for(lambda: runs(r, keys, "Killer").get("fine") == 1, timeout=30, what="the next message")
    assert runs(r, keys, "Killer")["poison"] == 2


TICKER = """
from iii_console import Step, cron
config = Step(name="Ticker", triggers=[cron("* * * * * *")])
def handler(tick, ctx):
    ctx.state.update("ticks", "Ticker", [{"type": "increment", "path": str(tick.scheduled_ms)}])
"""


def test_two_schedulers_on_rabbitmq_fire_each_tick_once_and_each_runs_once(
    rproject, runtime, r, keys, rabbit_node, rabbit_prefix
):
    """Given two schedulers taking turns over 10 s of their clock, each tick is claimed once in Redis (one cron.fired)
    and published once (the second scheduler finds the claim taken before publishing); the worker runs each once."""
    from iii_console.runtime.brokers import make_producer
    from iii_console.runtime.scheduler import Scheduler

    cfg, steps = rproject({"ticker_step.py": TICKER})
    t0 = 1_700_000_000_000
    clock_ms = [t0]
    opened = [Services.open(cfg, "scheduler") for _ in range(2)]
    try:
        scheds = [
            Scheduler(
                svc, steps.cron_steps(), make_producer(svc, subscriptions_for(steps.steps)), clock=lambda: clock_ms[0] / 1000
            )
            for svc in opened
        ]
        for _ in range(40):
            clock_ms[0] += 250
            for s in scheds:
                s.run_once()
        for svc in opened:
            svc.sink.flush()
    finally:
        for svc in opened:
            svc.close()
    ticks = [t0 + i * 1000 for i in range(1, 11)]
    assert sorted(e.data["scheduled_ms"] for e in events(r, keys, "cron.fired")) == ticks
    published = ready(rabbit_node, f"{rabbit_prefix}._cron--Ticker--normal")
    assert published == 10
    runtime(cfg, steps)
    wait_for(lambda: ready(rabbit_node, f"{rabbit_prefix}._cron--Ticker--normal") == 0, what="the queue drained")
    time.sleep(0.5)
    raw = r.hget(keys.state_group("ticks"), "Ticker")
    assert json.loads(raw) == {str(t): 1 for t in ticks}


def test_a_second_copy_of_a_once_only_message_runs_once(rproject, runtime, producer, r, keys):
    """Given a state trigger's message published twice under one once-key (a producer that published, then lost the
    claim to another), when a worker takes both, then the handler runs once and the second copy is skipped with a log."""
    cfg, steps = rproject({"rec_step.py": RECORD})
    p = producer(cfg, steps)
    once = keys.once("change-1:Rec")
    for _ in range(2):  # what two racing producers leave in the queue
        _triples, copies, prio = p.build("jobs", {"k": "once"}, trace_id="t", priority=None, delay_ms=0, source="state")
        p._publish("jobs", copies, prio, 0, once)
    runtime(cfg, steps)
    events_once(r, keys, "log", 1, where=lambda e: "second copy" in str(e.data.get("message")))
    time.sleep(0.3)
    assert runs(r, keys, "Rec") == {"once": 1}


def test_a_run_key_is_kept_as_long_as_a_dedup_key_longer_than_a_day(rproject, runtime, producer, r, keys):
    """Given a message enqueued on RabbitMQ with a dedup key kept 3 days, when it runs, then its run-key (which skips
    a second copy a racing producer published) is kept as long, not the default day: a copy consumed on day two
    would otherwise run again while the key still says it was done."""
    cfg, steps = rproject({"rec_step.py": RECORD})
    runtime(cfg, steps)
    three_days = 3 * 86_400_000
    producer(cfg, steps).enqueue("jobs", {"k": "long"}, trace_id="t-long", dedup_key="long-1", dedup_ttl_ms=three_days)
    wait_for(lambda: runs(r, keys, "Rec").get("long") == 1, what="the message run")
    ttl = r.pttl(f"{keys.dedup('jobs', 'long-1')}:run:Rec")
    assert three_days - 60_000 < ttl <= three_days, ttl
    producer(cfg, steps).enqueue("jobs", {"k": "short"}, trace_id="t-short", dedup_key="short-1", dedup_ttl_ms=60_000)
    wait_for(lambda: runs(r, keys, "Rec").get("short") == 1, what="the other message run")
    assert 86_400_000 - 60_000 < r.pttl(f"{keys.dedup('jobs', 'short-1')}:run:Rec") <= 86_400_000


def test_a_delay_longer_than_a_delay_queue_holds_is_waited_out_in_hops_never_early(
    rproject, runtime, producer, r, keys, monkeypatch
):
    """Given delay queues that hold at most 1 s (RabbitMQ's TTL timer tops out at 49.7 days; the hop is 23 days),
    when a message is enqueued 3.5 s ahead, then it waits in the 1 s queue hop after hop and runs once, not before
    its due time; no delay queue longer than a hop is made."""
    from iii_console.adapters.queue import rmq_broker, rmq_producer, rmq_topology

    for module in (rmq_topology, rmq_broker, rmq_producer):
        monkeypatch.setattr(module, "MAX_HOP_MS", 1000)
    cfg, steps = rproject({"rec_step.py": RECORD})
    runtime(cfg, steps)
    t0 = time.time() * 1000
    producer(cfg, steps).enqueue("jobs", {"k": "later"}, trace_id="t-hops", delay_ms=3500)
    wait_for(lambda: runs(r, keys, "Rec").get("later") == 1, timeout=20, what="the delayed message run")
    [started] = [e for e in events(r, keys, "message.started") if e.trace_id == "t-hops"]
    assert started.ts >= t0 + 3500, started.ts - t0
    assert max(int(m) for m in r.smembers(keys.broker_delays)) <= 1000  # hops of 1 s, then the rest
    time.sleep(1.5)
    assert runs(r, keys, "Rec") == {"later": 1}


def test_a_dedup_key_used_again_after_its_ttl_runs_its_message_on_rabbitmq(rproject, runtime, producer, r, keys):
    """Given a message enqueued with a dedup key and run, when the key's TTL has passed and a message is enqueued
    with the same key, then it is accepted with new ids and runs too (its run-key is not the first one's); within
    the TTL a third is deduplicated to the second's ids."""
    cfg, steps = rproject({"rec_step.py": RECORD})
    runtime(cfg, steps)
    p = producer(cfg, steps)
    first = p.enqueue("jobs", {"k": "first"}, trace_id="t1", dedup_key="order-42", dedup_ttl_ms=300)
    wait_for(lambda: runs(r, keys, "Rec").get("first") == 1, what="the first message run")
    wait_for(lambda: not r.exists(keys.dedup("jobs", "order-42")), what="the dedup key to expire")
    second = p.enqueue("jobs", {"k": "second"}, trace_id="t2", dedup_key="order-42", dedup_ttl_ms=60_000)
    assert second and set(second).isdisjoint(first or [])
    wait_for(lambda: runs(r, keys, "Rec").get("second") == 1, timeout=20, what="the second message run")
    assert p.enqueue("jobs", {"k": "third"}, trace_id="t3", dedup_key="order-42", dedup_ttl_ms=60_000) == second
    time.sleep(0.5)
    assert runs(r, keys, "Rec") == {"first": 1, "second": 1}
    assert not [e for e in events(r, keys, "log") if "second copy" in str(e.data.get("message"))]


@pytest.mark.slow
def test_http_answers_503_not_500_while_rabbitmq_is_unreachable(tmp_path, redis_url, procs):
    """Given a server whose rabbitmq.url points at a closed port, when a step enqueues, then the answer is 503 with
    Retry-After (try again), not 500."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    api = """
from iii_console import Step, http
config = Step(name="Post", triggers=[http("POST", "/jobs")], enqueues=["jobs"])
def handler(req, ctx):
    ctx.enqueue("jobs", req.body)
    return {"status": 202, "body": {}}
"""
    make_project(
        tmp_path,
        {"rec_step.py": RECORD, "post_step.py": api},
        f"broker: rabbitmq\nrabbitmq:\n  url: amqp://guest:guest@127.0.0.1:{closed}/%2F\n",
        redis_url=redis_url,
    )
    app = procs(tmp_path, "--role", "server", "--port", "0")
    url = app.banner.split(" on ", 1)[1].split(" with", 1)[0]
    t0 = time.monotonic()
    resp = httpx.post(f"{url}/jobs", json={"k": "x"}, timeout=30)
    assert resp.status_code == 503 and resp.headers.get("retry-after"), (resp.status_code, resp.text)
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_an_http_step_calling_enqueue_group_on_rabbitmq_fails_clearly_and_sends_nothing(
    rproject, procs, r, keys, rabbit_node, rabbit_prefix, tmp_path
):
    """Given broker: rabbitmq, when an HTTP step calls ctx.enqueue_group, then the answer is a 500 (a deployment
    that needs broker: redis is the server's fault, not the client's), its step.error says fan-in groups need
    broker: redis, and no child reached the queue: the next plain enqueue is the only message there."""
    import httpx

    api = """
from iii_console import Step, http
config = Step(name="Fan", triggers=[http("POST", "/fan"), http("POST", "/one")], enqueues=["jobs", "done"])
def handler(req, ctx):
    if req.path == "/fan":
        ctx.enqueue_group("jobs", [{"k": "a"}, {"k": "b"}], then="done")
    else:
        ctx.enqueue("jobs", {"k": "one"})
    return {"status": 202, "body": {}}
"""
    rproject({"rec_step.py": RECORD, "fan_step.py": api})
    app = procs(tmp_path, "--role", "server", "--port", "0")
    url = app.banner.split(" on ", 1)[1].split(" with", 1)[0]
    resp = httpx.post(f"{url}/fan", json={}, timeout=30)
    assert resp.status_code == 500, resp.text
    [err] = wait_for(lambda: events(r, keys, "step.error"), what="the step.error event")
    assert err.step == "Fan" and "fan-in groups (enqueue_group) need broker: redis" in (err.error or ""), err
    assert httpx.post(f"{url}/one", json={}, timeout=30).status_code == 202
    assert ready(rabbit_node, f"{rabbit_prefix}.jobs--Rec--normal") == 1


def test_the_consoles_replay_and_run_now_go_to_rabbitmq(rproject, runtime, producer, r, keys, redis_url):
    """Given a console on a RabbitMQ deployment, when it replays a dead letter and fires a cron step now, then both are
    published to RabbitMQ and run (not written to Redis queues no worker reads)."""
    from iii_console.runtime.brokers import console_broker
    from iii_console.tui.ops import Writer

    cron_step = TICKER.replace('cron("* * * * * *")', 'cron("0 0 1 1 *")')
    cfg, steps = rproject({"flaky_step.py": FLAKY, "ticker_step.py": cron_step}, "queues:\n  flaky:\n    max_retries: 0\n")
    r.hset(keys.state_group("switch"), "broken", "true")
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("flaky", {"k": "c"}, trace_id="t-console")
    store = DeadLetterStore(r, keys)
    [entry] = wait_for(lambda: store.list("dead-letters"), what="the dead letter")
    r.hdel(keys.state_group("switch"), "broken")
    writer = Writer(redis_url, keys, broker=console_broker(cfg))
    result = writer.replay([entry])
    assert [old for old, _new in result.replayed] == [entry.id] and not result.skipped
    wait_for(lambda: runs(r, keys, "Flaky") == {"c": 2}, what="the replayed message to run")
    mid = writer.run_cron("Ticker", "0 0 1 1 *")
    assert mid
    wait_for(lambda: r.hget(keys.state_group("ticks"), "Ticker"), what="the manual tick to run")
    assert [e.message_id for e in events_once(r, keys, "cron.fired", 1)] == [mid]


def test_a_list_of_node_urls_is_tried_in_turn(rabbit_node, rabbit_prefix):
    """Given rabbitmq.url listing a closed port before the node (a cluster with its first node down), then each URL
    becomes its own connection parameters and a confirmed publish goes to the node that is up."""
    import socket

    from iii_console.adapters.queue.rmq_topology import Publisher, parameters

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    url = f"amqp://guest:guest@127.0.0.1:{closed}/%2F ; {rabbit_node.url};"
    assert [(p.host, p.port) for p in parameters(url)] == [("127.0.0.1", closed), ("127.0.0.1", rabbit_node.port)]
    pub = Publisher(url)
    queue = f"{rabbit_prefix}.urls"
    try:
        pub.run(lambda ch: ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"}))
        pub.publish("", queue, b"{}")
        assert ready(rabbit_node, queue) == 1
        pub.run(lambda ch: ch.queue_delete(queue))
    finally:
        pub.close()


def test_delays_share_a_bounded_set_of_delay_queues_and_never_run_early():
    """Configured delays keep their own queue; computed ones are rounded up to two significant digits (never early, at
    most 10 % late), so a throttle's waits do not make a quorum queue each."""
    from iii_console.adapters.queue.rmq_topology import delay_bucket

    assert [delay_bucket(ms) for ms in (1, 99, 300, 1500, 3000, 60_000)] == [1, 99, 300, 1500, 3000, 60_000]
    waits = range(1, 3_600_000, 997)
    assert all(ms <= delay_bucket(ms) <= ms * 1.1 for ms in waits)
    assert len({delay_bucket(ms) for ms in waits}) < 500


@pytest.mark.slow
def test_http_answers_429_past_max_queue_depth_counted_in_rabbitmq(rproject, procs, rabbit_node, rabbit_prefix, tmp_path):
    """Given server.max_queue_depth 5 and no worker, when 30 requests arrive one after another, then the first ones are
    accepted up to the limit (read from the RabbitMQ queues), the rest answer 429, and every 202 is in its queue."""
    import httpx

    api = """
from iii_console import Step, http
config = Step(name="Post", triggers=[http("POST", "/jobs")], enqueues=["jobs"])
def handler(req, ctx):
    ctx.enqueue("jobs", req.body)
    return {"status": 202, "body": {}}
"""
    rproject({"rec_step.py": RECORD, "post_step.py": api}, "server:\n  max_queue_depth: 5\n")
    app = procs(tmp_path, "--role", "server", "--port", "0")
    url = app.banner.split(" on ", 1)[1].split(" with", 1)[0]
    codes = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(30):
            codes.append(http.post("/jobs", json={"k": f"m{i}"}).status_code)
            time.sleep(0.02)
    assert set(codes) == {202, 429}, codes
    assert 5 <= codes.count(202) <= 7, codes
    assert ready(rabbit_node, f"{rabbit_prefix}.jobs--Rec--normal") == codes.count(202)


@pytest.mark.slow
def test_graceful_restarts_do_not_count_as_deliveries_on_rabbitmq(rproject, runtime, producer, r, keys):
    """Given max_deliveries 2 and messages waiting in a worker's prefetch behind a slow one, when the worker is stopped
    gracefully and started again 3 times, then nothing is dead-lettered and every message runs exactly once (prefetched
    messages go back as fresh copies, not as returns a quorum queue would count)."""
    cfg, steps = rproject(
        {"rec_step.py": RECORD}, "queues:\n  jobs:\n    concurrency: 1\n    max_deliveries: 2\nworkers:\n  threads: 1\n"
    )
    p = producer(cfg, steps)
    for i in range(6):
        p.enqueue("jobs", {"k": f"m{i}", "sleep": 0.3}, trace_id=f"t{i}")
    for _ in range(3):
        rt = runtime(cfg, steps, threads=1)
        time.sleep(0.4)  # one handler runs; the next ones wait in the worker's prefetch
        rt.stop(timeout_s=10)
    runtime(cfg, steps, threads=1)
    wait_for(lambda: runs(r, keys, "Rec") == {f"m{i}": 1 for i in range(6)}, timeout=30, what="every message, once")
    assert DeadLetterStore(r, keys).count("dead-letters") == 0


def test_a_replayed_once_only_message_runs_again(rproject, runtime, producer, r, keys):
    """Given a once-only message (a state trigger's, say) that failed into the dead letters, when it is replayed, then it
    runs: the replay is a new message, not a second copy its run-key would skip."""
    from iii_console.runtime.brokers import make_replayer

    cfg, steps = rproject({"flaky_step.py": FLAKY}, "queues:\n  flaky:\n    max_retries: 0\n")
    r.hset(keys.state_group("switch"), "broken", "true")
    runtime(cfg, steps)
    assert producer(cfg, steps).enqueue("flaky", {"k": "o"}, trace_id="t", once=keys.once("change-9:Flaky"))
    store = DeadLetterStore(r, keys)
    [entry] = wait_for(lambda: store.list("dead-letters"), what="the dead letter")
    r.hdel(keys.state_group("switch"), "broken")
    svc = Services.open(cfg, "test")
    try:
        make_replayer(svc).replay(entry)
    finally:
        svc.close()
    wait_for(lambda: runs(r, keys, "Flaky") == {"o": 2}, what="the replayed message to run")


def test_cron_run_from_the_cli_publishes_the_tick_to_rabbitmq(rproject, runtime, r, keys, tmp_path):
    """`iii-console cron run STEP` on a RabbitMQ project publishes the manual tick there, and the worker runs it."""
    cfg, steps = rproject({"ticker_step.py": TICKER.replace('cron("* * * * * *")', 'cron("0 0 1 1 *")')})
    runtime(cfg, steps)
    out = subprocess.run(
        [sys.executable, "-m", "iii_console", "cron", "run", "Ticker", "--json", "--config", str(tmp_path / "iii-config.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    [mid] = json.loads(out.stdout)["message_ids"]
    wait_for(lambda: r.hget(keys.state_group("ticks"), "Ticker"), what="the manual tick to run")
    [fired] = events_once(r, keys, "cron.fired", 1)
    assert fired.message_id == mid and fired.data["manual"] is True
    events_once(r, keys, "message.processed", 1, where=lambda e: e.message_id == mid)


def test_a_consume_refused_while_its_queue_is_starting_is_retried_at_once(rabbit_node, rabbit_prefix, r, keys, caplog):
    """Given a quorum queue whose replica process is not running yet (as for a moment after another connection declared
    it), when a consumer starts on it, then RabbitMQ's refusal (541 on the consume) is retried on a new connection at
    once, not after Dramatiq's 3 s restart: the consumer raises nothing and receives once the replica is up."""
    import threading

    from dramatiq.message import Message

    from iii_console.adapters.queue.rmq_broker import RabbitBroker

    broker = RabbitBroker(url=rabbit_node.url, prefix=rabbit_prefix, client=r, keys=keys, exchange_topics={})
    queue = "jobs--S--normal"
    server = f"{{'%2F_{rabbit_prefix}.{queue}', node()}}"
    try:
        broker.publisher.run(lambda _ch: None, declare=[broker.declaration(queue)])
        stopped = rabbit_node.ctl("eval", f"ra:stop_server(quorum_queues, {server}).")
        assert stopped.stdout.strip() == b"ok", stopped

        def restart_and_publish() -> None:
            time.sleep(0.5)
            rabbit_node.ctl("eval", f"ra:restart_server(quorum_queues, {server}).")
            broker.publish_to_queue(queue, Message(queue, "a", (), {}, {}, message_id="m1").encode())

        caplog.set_level("INFO", logger="iii_console.adapters.queue.rmq_broker")
        later = threading.Thread(target=restart_and_publish)
        later.start()
        consumer = broker.consume(queue, prefetch=1, timeout=50)
        try:
            got = None
            deadline = time.monotonic() + 15
            while got is None and time.monotonic() < deadline:
                got = next(consumer)
            assert got is not None and got.message_id == "m1"
        finally:
            consumer.close()
            later.join()
        assert any("refused while its queue was starting" in rec.getMessage() for rec in caplog.records)
    finally:
        broker.close()


@pytest.mark.parametrize("gate", ["open", "shut"])
def test_held_deliveries_are_not_copied_when_rabbitmq_takes_them_back_with_the_channel(rabbit_node, rabbit_prefix, r, keys, gate):
    """Given a consumer holding deliveries (a higher-priority queue has a backlog: one held, two behind it), with the store gate open or
    shut (Redis away), when RabbitMQ closes the consumer's channel (a consumer_timeout passing during a long hold, a
    channel error) and so takes them back, then the consumer raises ConnectionClosed within a few reads (pika's waits
    do not raise for a closed channel), and its close publishes no copy of them: the queue holds each message once."""
    from dramatiq.errors import ConnectionClosed
    from dramatiq.message import Message

    from iii_console.adapters.queue.rmq_broker import RabbitBroker
    from iii_console.adapters.queue.storefault import StoreGate

    broker = RabbitBroker(url=rabbit_node.url, prefix=rabbit_prefix, client=r, keys=keys, exchange_topics={})
    low, high = "jobs--S--low", "jobs--S--high"
    try:
        broker.publisher.run(lambda _ch: None, declare=[broker.declaration(q) for q in ("jobs--S--high", "jobs--S--normal", low)])
        broker.publish_to_queue(high, Message(high, "a", (), {}, {}, message_id="urgent").encode())
        for i in range(3):
            broker.publish_to_queue(low, Message(low, "a", (), {}, {}, message_id=f"m{i}").encode())
        consumer = broker.consume(low, prefetch=3, timeout=50)
        deadline = time.monotonic() + 15
        while not consumer.held and time.monotonic() < deadline:
            assert next(consumer) is None, "a low-priority delivery ran while the high queue has a backlog"
        for _ in range(10):  # the other two arrive too, and wait in pika's buffer behind the held one
            assert next(consumer) is None, "a low-priority delivery ran while the high queue has a backlog"
        assert [Message.decode(body).message_id for _m, body in consumer.held] == ["m0"]
        if gate == "shut":
            broker.store_gate = StoreGate(r, keys, probe_s=3600)  # no probe opens it during the test
            broker.store_gate.shut("unreachable")
        consumer.channel.basic_ack(delivery_tag=10_000)  # an unknown tag: RabbitMQ closes the channel (406)
        raised = None
        for _ in range(50):
            try:
                next(consumer)
            except ConnectionClosed as exc:
                raised = exc
                break
        assert raised is not None, "the consumer went on reading a closed channel"
        consumer.close()  # what Dramatiq does next
        with pika.BlockingConnection(pika.URLParameters(rabbit_node.url)) as conn:
            ch = conn.channel()
            name = broker.topology.queue(low)
            counts = []
            for _ in range(20):  # settled: the same count for a second
                counts.append(ch.queue_declare(name, passive=True).method.message_count)
                if len(counts) >= 5 and len(set(counts[-5:])) == 1:
                    break
                time.sleep(0.25)
            assert counts[-1] == 3, f"the queue holds {counts[-1]} messages, not the three published: {counts}"
    finally:
        broker.close()
