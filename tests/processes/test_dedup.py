"""Dedup keys: a second enqueue under the same key within its TTL is a no-op returning the first ids.
Real Redis, a real worker, and a real ``iii-console`` process for the HTTP ``Idempotency-Key``."""

from __future__ import annotations

import json
import textwrap
import time

import httpx
import pytest

from iii_console.adapters.queue.producer import EnqueueError

from ..helpers import events, make_project, recorder, runs, start_cli, wait_for


def test_a_second_enqueue_under_a_dedup_key_returns_the_first_ids_and_runs_nothing(project, runtime, producer, r, keys):
    cfg, steps = project({"a_step.py": recorder("A"), "b_step.py": recorder("B")})
    p = producer(cfg, steps)
    first = p.enqueue("jobs", {"k": "m1"}, trace_id="t1", dedup_key="order-7", dedup_ttl_ms=60_000)
    again = p.enqueue("jobs", {"k": "m1"}, trace_id="t2", dedup_key="order-7", dedup_ttl_ms=60_000)
    assert len(first) == 2 and again == first  # one id per subscribed step, the same list back
    other_topic = p.enqueue("other", {"k": "x"}, trace_id="t3", dedup_key="order-7")  # keys are per topic
    assert other_topic == []
    runtime(cfg, steps)
    wait_for(lambda: runs(r, keys, "A").get("m1") == 1 and runs(r, keys, "B").get("m1") == 1, what="processed")
    time.sleep(0.3)
    assert runs(r, keys, "A") == {"m1": 1} and runs(r, keys, "B") == {"m1": 1}
    assert len(events(r, keys, "message.enqueued")) == 2
    [hit] = events(r, keys, "message.deduplicated")
    assert hit.trace_id == "t2" and hit.topic == "jobs" and hit.data == {"dedup_key": "order-7", "message_ids": first}
    assert 0 < r.pttl(keys.dedup("jobs", "order-7")) <= 60_000
    assert int(r.hget(keys.metrics_counts, "message.deduplicated|jobs|") or 0) == 1


def test_after_the_ttl_the_same_key_enqueues_again(project, producer, r, keys):
    cfg, steps = project({"a_step.py": recorder("A")})
    p = producer(cfg, steps)
    first = p.enqueue("jobs", {"k": "m"}, trace_id="t", dedup_key="k1", dedup_ttl_ms=200)
    time.sleep(0.35)
    second = p.enqueue("jobs", {"k": "m"}, trace_id="t", dedup_key="k1", dedup_ttl_ms=200)
    assert second != first and len(second) == 1


def test_invalid_dedup_arguments_are_clear_errors_that_enqueue_nothing(project, producer, r, keys):
    cfg, steps = project({"a_step.py": recorder("A")})
    p = producer(cfg, steps)
    for kw in (
        {"dedup_key": ""},
        {"dedup_key": 5},
        {"dedup_key": "x" * 600},
        {"dedup_key": "k", "dedup_ttl_ms": 0},
        {"dedup_key": "k", "dedup_ttl_ms": 1.5},
        {"dedup_key": "k", "dedup_ttl_ms": 10**19},  # past what Redis takes: refused here, not by Redis
        {"dedup_key": "\ud800"},  # a lone surrogate cannot be encoded
    ):
        with pytest.raises(EnqueueError, match="dedup_"):
            p.enqueue("jobs", {"k": "m"}, trace_id="t", **kw)
    assert events(r, keys, "message.enqueued") == []


STEPS = {
    "order_step.py": """
        from iii_console import Step, http
        config = Step(name="TakeOrder", triggers=[http("POST", "/orders")], enqueues=["orders.placed"])
        async def handler(req, ctx):
            ids = await ctx.enqueue("orders.placed", req.body, dedup_key=ctx.idempotency_key)
            return {"status": 202, "body": {"ids": ids, "key": ctx.idempotency_key}}
    """,
    "ship_step.py": """
        from iii_console import Step, queue
        config = Step(name="Ship", triggers=[queue("orders.placed")])
        def handler(order, ctx):
            ctx.state.update("shipped", "count", [{"type": "increment", "path": order["sku"]}])
    """,
}


def test_http_idempotency_key_header_makes_a_retried_request_enqueue_once(tmp_path, redis_url, r, keys):
    make_project(tmp_path, {n: textwrap.dedent(s) for n, s in STEPS.items()}, "server:\n  port: 0\n", redis_url=redis_url)
    run = start_cli(tmp_path, "--no-ui")
    try:
        hdr = {"content-type": "application/json", "idempotency-key": "client-req-42"}
        a = httpx.post(run.url + "/orders", json={"sku": "s1"}, headers=hdr)
        b = httpx.post(run.url + "/orders", json={"sku": "s1"}, headers=hdr)
        c = httpx.post(run.url + "/orders", json={"sku": "s1"}, headers={"content-type": "application/json"})
        assert a.status_code == b.status_code == c.status_code == 202
        assert a.json()["ids"] == b.json()["ids"] and a.json()["key"] == "client-req-42"
        assert c.json()["ids"] != a.json()["ids"] and c.json()["key"] is None  # no header: no dedup
        bad = httpx.post(run.url + "/orders", json={"sku": "s1"}, headers={**hdr, "idempotency-key": "x" * 300})
        assert bad.status_code == 400 and "Idempotency-Key" in bad.text
        wait_for(lambda: json.loads(r.hget(keys.state_group("shipped"), "count") or "{}").get("s1") == 2, what="two shipped")
        time.sleep(0.3)
        assert json.loads(r.hget(keys.state_group("shipped"), "count")) == {"s1": 2}
    finally:
        assert run.stop() == 0


def test_racing_enqueues_under_one_key_enqueue_once_and_all_get_the_same_ids(project, producer, r, keys):
    import threading

    cfg, steps = project({"a_step.py": recorder("A")})
    producers = [producer(cfg, steps) for _ in range(8)]
    got: list[list[str]] = []
    go = threading.Barrier(len(producers))

    def send(p):
        go.wait()
        got.append(p.enqueue("jobs", {"k": "m"}, trace_id="t", dedup_key="race"))

    threads = [threading.Thread(target=send, args=(p,)) for p in producers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(ids == got[0] for ids in got) and len(got[0]) == 1
    assert len(events(r, keys, "message.enqueued")) == 1 and len(events(r, keys, "message.deduplicated")) == 7
    assert r.llen(f"{keys.dramatiq_namespace}:jobs--A--normal") == 1
