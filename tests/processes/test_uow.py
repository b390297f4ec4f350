"""An HTTP step's writes as one unit of work: applied together when the handler returns, not at all when
it raises; reads see the run's own writes; a value that changed under the run makes it run again.
Real server process (``--role server``: no worker takes the messages) on real Redis."""

from __future__ import annotations

import json
import textwrap

import httpx
import pytest
import redis

from iii_console.core.keys import Keys

from ..helpers import events, make_project, start_cli, wait_for

pytestmark = pytest.mark.slow

KEYS = Keys()

STEPS = {
    "sink_step.py": """
        from iii_console import Step, queue

        config = Step(name="Sink", triggers=[queue("uow.t")])

        def handler(data, ctx):
            pass
    """,
    "boom_step.py": """
        from iii_console import Step, http

        config = Step(name="Boom", triggers=[http("POST", "/boom")], enqueues=["uow.t"])

        async def handler(req, ctx):
            key = req.body["key"]
            await ctx.state.set("uow", key, {"v": 1})
            await ctx.state.update("uow", "counter", [{"type": "increment", "path": "n"}])
            await ctx.enqueue("uow.t", {"key": key})
            await ctx.enqueue("uow.t", {"key": key}, dedup_key=key)
            raise RuntimeError("after the writes")
    """,
    "ryw_step.py": """
        from iii_console import Step, http

        config = Step(name="Ryw", triggers=[http("POST", "/ryw")], enqueues=["uow.t"])

        async def handler(req, ctx):
            k = req.body["key"]
            seen = {}
            seen["before"] = await ctx.state.get("ryw", k)
            await ctx.state.set("ryw", k, {"n": 1})
            seen["after_set"] = await ctx.state.get("ryw", k)
            seen["update"] = await ctx.state.update("ryw", k, [{"type": "increment", "path": "n", "by": 2}])
            seen["after_update"] = await ctx.state.get("ryw", k)
            await ctx.state.set("ryw", k + "-gone", {"x": 1})
            seen["deleted"] = await ctx.state.delete("ryw", k + "-gone")
            seen["many"] = await ctx.state.get_many("ryw", [k, k + "-gone"])
            seen["list"] = await ctx.state.list("ryw")
            seen["replace_wrong"] = await ctx.state.replace("ryw", k, {"n": 1}, {"n": 9})
            seen["replace_right"] = await ctx.state.replace("ryw", k, {"n": 3}, {"n": 4})
            seen["ids"] = await ctx.enqueue("uow.t", {"key": k}, dedup_key=k)
            seen["ids_again"] = await ctx.enqueue("uow.t", {"key": k}, dedup_key=k)
            return seen
    """,
    "put_step.py": """
        from iii_console import Step, http

        config = Step(name="Put", triggers=[http("POST", "/put")])

        async def handler(req, ctx):
            return {"set": await ctx.state.set("put", req.body["key"], req.body["v"])}
    """,
    "locked_step.py": """
        import redis

        from iii_console import Step, http

        config = Step(name="Locked", triggers=[http("POST", "/locked")])

        async def handler(req, ctx):
            await ctx.state.set("locked", "before", {"v": 1})
            async with await ctx.lock("uow-lock", 5000):
                await ctx.state.set("locked", "inside", {"v": 2})
                r = redis.Redis.from_url(req.body["redis"])
                seen = [r.hget(req.body["hash"], k) is not None for k in ("before", "inside")]
                r.close()
            if req.body.get("fail"):
                raise RuntimeError("after the lease")
            return {"seen_while_held": seen}
    """,
    "bump_step.py": """
        import json

        import redis

        from iii_console import Step, http

        config = Step(name="Bump", triggers=[http("POST", "/bump")])
        RUNS = {"n": 0}

        async def handler(req, ctx):
            RUNS["n"] += 1
            n = (await ctx.state.update("bump", "c", [{"type": "increment", "path": "n"}]))["n"]
            if RUNS["n"] == 1:
                # Another writer changes the value after this run read it, before its writes are applied.
                r = redis.Redis.from_url(req.body["redis"])
                r.hset(req.body["hash"], "c", json.dumps({"n": 100}, separators=(",", ":"), sort_keys=True))
                r.close()
            return {"n": n, "runs": RUNS["n"]}
    """,
    "ordered_step.py": """
        from iii_console import Step, http

        config = Step(name="Ordered", triggers=[http("POST", "/ordered")], enqueues=["uow.t"])

        async def handler(req, ctx):
            k = req.body["key"]
            ctx.logger.info("before the writes", key=k)
            await ctx.state.set("ordered", k, {"k": k})
            await ctx.enqueue("uow.t", {"key": k})
            ctx.logger.info("after the writes", key=k)
            return {"key": k}
    """,
    "relay_step.py": """
        from iii_console import Step, http

        config = Step(name="Relay", triggers=[http("POST", "/relay")], enqueues=["uow.t"])

        async def handler(req, ctx):
            ids = await ctx.enqueue("uow.t", {"text": req.body["text"]})
            return {"ids": ids}
    """,
}


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_server):
    root = tmp_path_factory.mktemp("uow")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    make_project(root, {n: textwrap.dedent(s) for n, s in STEPS.items()}, "server:\n  port: 0\n", redis_url=redis_server.url)
    run = start_cli(root, "--no-ui", "--role", "server")
    yield run
    assert run.stop() == 0
    client.close()


def _queued(rc: redis.Redis) -> int:
    return sum(rc.hlen(k) for k in rc.scan_iter(f"{KEYS.dramatiq_namespace}:*.msgs"))


def test_a_handler_that_raises_after_its_writes_writes_nothing(app, rc):
    """Given an HTTP step that sets a key, updates a counter, enqueues twice (once with a dedup key) and then
    raises, when it is called, then it answers 500 and Redis holds no key, no counter, no message, no dedup
    key, and the stream has no state.changed or message.enqueued of its trace."""
    before = _queued(rc)
    resp = httpx.post(f"{app.url}/boom", json={"key": "b1"}, timeout=30)
    assert resp.status_code == 500
    trace = resp.json()["trace_id"]
    assert rc.hget(KEYS.state_group("uow"), "b1") is None
    assert rc.hget(KEYS.state_group("uow"), "counter") is None
    assert _queued(rc) == before
    assert rc.get(KEYS.dedup("uow.t", "b1")) is None
    assert [e.type for e in events(rc, KEYS) if e.trace_id == trace and e.type in ("state.changed", "message.enqueued")] == []
    # The failure itself is reported, as before.
    wait_for(lambda: [e for e in events(rc, KEYS, "step.error") if e.trace_id == trace], what="the step.error")


def test_reads_see_the_runs_own_writes_and_everything_lands_in_one_call(app, rc):
    """Given an HTTP step that reads back each of its writes, when it runs, then every read sees the pending
    value, replace answers from it, a dedup key used twice gives the first ids, and afterwards Redis and the
    event stream hold exactly those writes, in the handler's order."""
    resp = httpx.post(f"{app.url}/ryw", json={"key": "r1"}, timeout=30)
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    trace = resp.headers["x-trace-id"]
    assert seen["before"] is None
    assert seen["after_set"] == {"n": 1}
    assert seen["update"] == seen["after_update"] == {"n": 3}
    assert seen["deleted"] == {"x": 1}
    assert seen["many"] == {"r1": {"n": 3}}
    assert seen["list"] == {"r1": {"n": 3}}
    assert (seen["replace_wrong"], seen["replace_right"]) == (False, True)
    assert len(seen["ids"]) == 1 and seen["ids_again"] == seen["ids"]

    assert json.loads(rc.hget(KEYS.state_group("ryw"), "r1")) == {"n": 4}
    assert rc.hget(KEYS.state_group("ryw"), "r1-gone") is None
    changed = [e for e in events(rc, KEYS, "state.changed") if e.trace_id == trace]
    assert [(e.data["key"], e.data["op"], e.data["old"], e.data["new"]) for e in changed] == [
        ("r1", "set", None, {"n": 1}),
        ("r1", "update", {"n": 1}, {"n": 3}),
        ("r1-gone", "set", None, {"x": 1}),
        ("r1-gone", "delete", {"x": 1}, None),
        ("r1", "set", {"n": 3}, {"n": 4}),
    ]
    assert all(e.step == "Ryw" for e in changed)
    enq = [e for e in events(rc, KEYS, "message.enqueued") if e.trace_id == trace]
    assert [e.message_id for e in enq] == seen["ids"]
    [dup] = [e for e in events(rc, KEYS, "message.deduplicated") if e.trace_id == trace]
    assert dup.data["message_ids"] == seen["ids"]
    assert json.loads(rc.get(KEYS.dedup("uow.t", "r1"))) == seen["ids"]

    # A second request: set is blind, so its event's old is the value found, with no rerun.
    resp = httpx.post(f"{app.url}/ryw", json={"key": "r1"}, timeout=30)
    assert resp.status_code == 200 and resp.json()["before"] == {"n": 4}


def test_a_requests_events_are_on_the_stream_before_the_writes_it_led_to_for_every_request(app, rc):
    """Given an HTTP step that logs, sets a key, enqueues and logs again, when 60 requests run 12 at a time,
    then for every request the stream holds, in entry order and nothing else of its trace, its
    http.received, its two log lines, its state.changed and its message.enqueued: the held-back events ride
    in the unit's call ahead of its writes (before, a state.changed could land before its http.received)."""
    import asyncio

    async def post_all() -> list[httpx.Response]:
        sem = asyncio.Semaphore(12)
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(i: int) -> httpx.Response:
                async with sem:
                    return await client.post(f"{app.url}/ordered", json={"key": f"o{i}"})

            return await asyncio.gather(*(one(i) for i in range(60)))

    answers = asyncio.run(post_all())
    assert [r.status_code for r in answers] == [200] * 60, [r.text for r in answers if r.status_code != 200]
    traces = {r.headers["x-trace-id"]: r.json()["key"] for r in answers}
    by_trace: dict[str, list] = {t: [] for t in traces}
    for e in events(rc, KEYS):
        if e.trace_id in by_trace:
            by_trace[e.trace_id].append(e)
    for trace, key in traces.items():
        seen = by_trace[trace]
        shape = [(e.type, (e.data or {}).get("message") if e.type == "log" else None) for e in seen]
        assert shape == [
            ("http.received", None),
            ("log", "before the writes"),
            ("log", "after the writes"),
            ("state.changed", None),
            ("message.enqueued", None),
        ], (key, shape)
        assert seen[3].data["key"] == key and seen[0].data["body"] == {"key": key}


@pytest.mark.parametrize("suffix", [".msgs", ".wake"])
def test_an_enqueue_whose_queue_key_has_the_wrong_type_fails_the_unit_before_anything_is_written(app, rc, suffix):
    """Given the queue's message hash (or its wake list) holding a string, when a step that logs, sets a key
    and enqueues is called, then it answers 500 and nothing of the unit is written: no key, no message, no
    state.changed or message.enqueued (each key is checked once per call, and every check comes first)."""
    bad = KEYS.queue("uow.t--Sink--normal") + suffix
    saved = rc.dump(bad)
    rc.delete(bad)
    rc.set(bad, "not a " + suffix)
    try:
        before = _queued(rc) if suffix != ".msgs" else None
        resp = httpx.post(f"{app.url}/ordered", json={"key": f"wrong{suffix}"}, timeout=30)
        assert resp.status_code == 500, resp.text
        trace = resp.json()["trace_id"]
        assert rc.hget(KEYS.state_group("ordered"), f"wrong{suffix}") is None
        if before is not None:
            assert _queued(rc) == before
        assert rc.get(bad) == b"not a " + suffix.encode()
        wait_for(lambda: "step.error" in [e.type for e in events(rc, KEYS) if e.trace_id == trace], what="its step.error")
        kinds = [e.type for e in events(rc, KEYS) if e.trace_id == trace]
        assert "state.changed" not in kinds and "message.enqueued" not in kinds, kinds
    finally:
        rc.delete(bad)
        if saved is not None:
            rc.restore(bad, 0, saved)
    resp = httpx.post(f"{app.url}/ordered", json={"key": f"right{suffix}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert rc.hget(KEYS.state_group("ordered"), f"right{suffix}") is not None


def test_a_handler_that_raises_still_has_its_request_on_the_stream_before_its_error(app, rc):
    """Given the step that raises after its writes, when it is called, then the request's held-back
    http.received is written (the unit's call never ran) and precedes its step.error."""
    resp = httpx.post(f"{app.url}/boom", json={"key": "b2"}, timeout=30)
    assert resp.status_code == 500
    trace = resp.json()["trace_id"]
    wait_for(lambda: "step.error" in [e.type for e in events(rc, KEYS) if e.trace_id == trace], what="its step.error")
    seen = [e.type for e in events(rc, KEYS) if e.trace_id == trace]
    assert seen == ["http.received", "step.error"], seen


def test_a_value_changed_under_the_run_makes_it_run_again_on_the_new_value(app, rc, redis_server):
    """Given an HTTP step that increments a counter while another writer sets it to 100 after the first run
    read it, when it is called, then the first run's writes are not applied, the handler runs again and
    answers 101, which is what Redis holds."""
    rc.hset(KEYS.state_group("bump"), "c", json.dumps({"n": 5}))
    body = {"redis": redis_server.url, "hash": KEYS.state_group("bump")}
    resp = httpx.post(f"{app.url}/bump", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"n": 101, "runs": 2}
    assert json.loads(rc.hget(KEYS.state_group("bump"), "c")) == {"n": 101}
    trace = resp.headers["x-trace-id"]
    [ev] = [e for e in events(rc, KEYS, "state.changed") if e.trace_id == trace]
    assert (ev.data["old"], ev.data["new"]) == ({"n": 100}, {"n": 101})


def test_a_set_over_a_value_it_did_not_read_records_the_old_value_found(app, rc):
    """Given a key holding a value, when an HTTP step sets it without reading it first, then the write lands
    and its state.changed names the value it replaced (the unit's guess "absent" is corrected, no rerun)."""
    rc.hset(KEYS.state_group("put"), "p1", json.dumps({"old": True}))
    resp = httpx.post(f"{app.url}/put", json={"key": "p1", "v": {"new": 1}}, timeout=30)
    assert resp.status_code == 200 and resp.json() == {"set": {"new": 1}}
    assert json.loads(rc.hget(KEYS.state_group("put"), "p1")) == {"new": 1}
    trace = resp.headers["x-trace-id"]
    [ev] = [e for e in events(rc, KEYS, "state.changed") if e.trace_id == trace]
    assert (ev.data["op"], ev.data["old"], ev.data["new"]) == ("set", {"old": True}, {"new": 1})


def test_taking_a_lease_applies_what_is_pending_and_later_writes_go_out_at_once(app, rc, redis_server):
    """Given an HTTP step that sets a key, takes a lease, sets another key inside it, when it runs, then both
    writes are in Redis while the lease is held (the first applied when the lease was taken, the second at
    once), and a failure after the lease leaves them written."""
    body = {"redis": redis_server.url, "hash": KEYS.state_group("locked")}
    resp = httpx.post(f"{app.url}/locked", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"seen_while_held": [True, True]}
    rc.delete(KEYS.state_group("locked"))
    resp = httpx.post(f"{app.url}/locked", json={**body, "fail": True}, timeout=30)
    assert resp.status_code == 500
    assert sorted(rc.hkeys(KEYS.state_group("locked"))) == [b"before", b"inside"]


def test_under_wait_replicas_the_units_call_is_followed_by_wait_on_its_own_connection(tmp_path, redis_server):
    """Given `redis.wait_replicas: 1` on a Redis with no replica, when an HTTP step's unit of work is applied,
    then the write stands (202-like answer, value in Redis) and the WAIT that followed it came back short: a warning
    `log` event names the step's writes. (Sent through the shared autopipeline instead, no WAIT would follow it.)"""
    keys = Keys("uowwait:")
    make_project(
        tmp_path,
        {"put_step.py": textwrap.dedent(STEPS["put_step.py"])},
        f"redis:\n  url: {redis_server.url}\n  prefix: 'uowwait:'\n  wait_replicas: 1\n  wait_timeout_ms: 20\n"
        "server:\n  port: 0\n",
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "server")
    client = redis.Redis.from_url(redis_server.url)
    try:
        resp = httpx.post(f"{run.url}/put", json={"key": "w1", "v": {"n": 1}}, timeout=30)
        assert resp.status_code < 300, resp.text
        assert json.loads(client.hget(keys.state_group("put"), "w1")) == {"n": 1}
        warned = wait_for(
            lambda: [e for e in events(client, keys, "log") if "an HTTP step's writes" in str(e.data.get("message"))],
            what="a warning that the unit's WAIT came back short",
        )
        assert warned[0].data["replicas_asked"] == 1 and warned[0].data["replicas_acked"] == 0
    finally:
        assert run.stop() == 0
        client.close()


def test_any_text_a_json_body_can_carry_is_enqueued_and_on_the_stream_as_sent(app, rc):
    """Given a body whose text holds non-ASCII characters, a control character and a lone surrogate (JSON's
    ``\\ud800`` escape), when an HTTP step enqueues it, then it answers 200 and the message and its
    message.enqueued event carry the text as sent."""
    text = "é 中 \x01 a\ud800b"
    raw = json.dumps({"text": text})  # ASCII, the surrogate as an escape
    resp = httpx.post(f"{app.url}/relay", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert resp.status_code == 200, resp.text
    [mid] = resp.json()["ids"]
    trace = resp.headers["x-trace-id"]
    [ev] = [e for e in events(rc, KEYS, "message.enqueued") if e.trace_id == trace]
    assert ev.message_id == mid and ev.data["payload"] == {"text": text}
    [stored] = [
        json.loads(v) for k in rc.scan_iter(f"{KEYS.dramatiq_namespace}:*.msgs") for v in rc.hvals(k) if mid.encode() in v
    ]
    assert stored["args"] == [{"text": text}]
