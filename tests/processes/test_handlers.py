"""Handlers as a step author writes them, run by the real CLI (server, worker and scheduler
processes on real Redis): sync and async, ``(input, ctx)`` and ``(ctx)``, every trigger kind,
several triggers on one step, and what the context gives each of them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
import redis

from iii_console.core.keys import Keys

from ..helpers import cli_send, events, make_project, start_cli, wait_for

pytestmark = pytest.mark.slow

KEYS = Keys()
#: More than any default thread pool has (min(32, CPUs + 4)): sync handlers that wait for
#: each other only all get to the barrier if each request has its own thread.
PARTIES = 40

STEPS = {
    # One handler, two triggers: the http one validates with a JSON-schema dict, the queue one with pydantic.
    "both_step.py": """
        import threading
        from pydantic import BaseModel
        from iii_console import Step, http, queue

        class In(BaseModel):
            k: str

        BODY = {"type": "object", "properties": {"k": {"type": "string", "minLength": 1}}, "required": ["k"],
                "additionalProperties": False}
        config = Step(name="Both", triggers=[http("POST", "/both/{kind}", body=BODY), queue("both.in", input=In)], enqueues=["fan"])

        def handler(inp, ctx):
            http = ctx.trigger["type"] == "http"
            k = inp.body["k"] if http else inp.k
            ids = ctx.enqueue("fan", {"k": k}, priority="high")
            ctx.state.set("seen", "both-" + k, {
                "trigger": dict(ctx.trigger), "ctx": type(ctx).__name__, "attempt": ctx.attempt,
                "max_attempts": ctx.max_attempts, "ids": ids, "message_id": ctx.message_id,
                "params": dict(inp.path_params) if http else None, "thread": threading.current_thread().name})
            ctx.logger.info("both ran", k=k)
            if http:
                return {"status": 201, "body": {"ids": ids}, "headers": {"x-kind": inp.path_params["kind"]}}
        """,
    "fan_a_step.py": """
        from iii_console import Step, queue
        config = {"name": "FanA", "triggers": [{"type": "queue", "topic": "fan"}]}

        async def handler(ctx):
            await ctx.state.set("seen", "fanA-" + ctx.message_id, {
                "trigger": dict(ctx.trigger), "ctx": type(ctx).__name__, "trace": ctx.trace_id})
        """,
    "fan_b_step.py": """
        from iii_console import Step, queue
        config = Step(name="FanB", triggers=[queue("fan")])

        def handler(data, ctx):
            ctx.state.update("seen", "fanB-" + data["k"], [{"type": "merge", "path": "", "value": {
                str(ctx.attempt): {"max_attempts": ctx.max_attempts, "message_id": ctx.message_id}}}])
            if ctx.attempt == 1:
                raise RuntimeError("the first attempt fails")
        """,
    "cron_sync_step.py": """
        from iii_console import Step, cron
        config = Step(name="CronSync", triggers=[cron("* * * * * *")])

        def handler(ctx):
            ctx.state.set("seen", "cron-sync", {"trigger": dict(ctx.trigger), "ctx": type(ctx).__name__, "trace": ctx.trace_id})
        """,
    "cron_async_step.py": """
        from iii_console import Step, cron
        config = Step(name="CronAsync", triggers=[cron("* * * * * *")])

        async def handler(tick, ctx):
            await ctx.state.set("seen", "cron-async", {"tick": [tick.scheduled_ms, tick.fired_ms],
                                                        "trigger": dict(ctx.trigger), "ctx": type(ctx).__name__})
        """,
    "watch_step.py": """
        from iii_console import Step, state
        config = Step(name="Watch", triggers=[state("seen", "both-*")])

        async def handler(change, ctx):
            await ctx.state.set("watched", change.key, {"trigger": dict(ctx.trigger), "trace": ctx.trace_id,
                                                        "change_trace": change.trace_id, "ctx": type(ctx).__name__})
            ctx.emit("notification.sent", data={"key": change.key})
        """,
    "delay_step.py": """
        from iii_console import Step, http, queue
        config = Step(name="Delay", triggers=[http("POST", "/delay"), queue("later")], enqueues=["later"])

        async def handler(inp, ctx):
            if ctx.trigger["type"] == "http":
                return {"status": 202, "body": {"ids": await ctx.enqueue("later", {"n": 1}, delay_ms=700)}}
            await ctx.state.set("seen", "later", {"attempt": ctx.attempt})
        """,
    "barrier_step.py": f"""
        import asyncio
        import threading
        from iii_console import Step, http

        config = Step(name="Barrier", triggers=[http("GET", "/barrier/sync")])
        BARRIER = threading.Barrier({PARTIES}, timeout=30)

        def handler(ctx):
            BARRIER.wait()
            return {{"ctx": type(ctx).__name__, "got": ctx.state.get("seen", "nothing")}}
        """,
    "abarrier_step.py": f"""
        import asyncio
        from iii_console import Step, http

        config = Step(name="ABarrier", triggers=[http("GET", "/barrier/async")])
        ARRIVED = []

        async def handler(ctx):
            ARRIVED.append(1)
            while len(ARRIVED) < {PARTIES}:  # every request must be in flight on the loop at once
                await asyncio.sleep(0.01)
            return {{"ctx": type(ctx).__name__, "ids": await ctx.enqueue("fan.none", {{}})}}
        """,
    "answer_step.py": """
        import dataclasses
        from pydantic import BaseModel
        from iii_console import Step, http

        class Out(BaseModel):
            a: int

        @dataclasses.dataclass
        class Row:
            b: int

        config = Step(name="Answer", triggers=[http("GET", "/answer/{kind}"), http("POST", "/answer/{kind}")])

        def handler(req, ctx):
            deep = []
            for _ in range(400):
                deep = [deep]
            return {
                "model": lambda: Out(a=1),
                "wrapped": lambda: {"status": 201, "body": [Out(a=2), Row(b=3)], "headers": {"x-n": 2}},
                "object": lambda: object(),
                "status": lambda: {"status": "ok"},
                "echo": lambda: req.body,
                "deep": lambda: deep,
                "header": lambda: {"status": 200, "body": {}, "headers": {"x-a": "1\\r\\nSet-Cookie: pwn=1"}},
                "header-name": lambda: {"status": 200, "body": {}, "headers": {"bad name": "1"}},
                "ref-name": lambda: {**ctx.blobs.put(b"x"), "name": [1]},
                "ref-type": lambda: {**ctx.blobs.put(b"x"), "content_type": "text/plain\\r\\nSet-Cookie: pwn=1"},
            }[req.path_params["kind"]]()
        """,
    # Broken: must be reported, and must not stop anything above.
    "broken_step.py": """
        config = {"name": "Broken", "triggers": [{"type": "queue", "topic": "t", "colour": "red"}]}
        def handler(x, ctx):
            pass
        """,
}

CONFIG = """
server:
  port: 0
queues:
  fan:
    max_retries: 2
    retry_delay: 100
"""


def seen(r: redis.Redis, key: str, group: str = "seen") -> dict | None:
    raw = r.hget(KEYS.state_group(group), key)
    return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_server):
    root = tmp_path_factory.mktemp("handlers")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    make_project(root, {name: textwrap.dedent(src) for name, src in STEPS.items()}, CONFIG, redis_url=redis_server.url)
    run = start_cli(root, "--no-ui")
    run.root = root  # type: ignore[attr-defined]
    yield run
    assert run.stop() == 0
    client.close()


def test_the_broken_step_is_reported_and_the_others_serve(app, rc):
    """Given a project with one broken step, when it runs, then stderr and a step.error event name the file, step
    and field, and every other step is served (checked by the tests below)."""
    line = wait_for(lambda: next((ln for ln in app.lines if "broken_step.py" in ln), None), what="the step error line")
    assert "step 'Broken', field 'triggers.0.colour': unknown field 'colour'" in line
    [err] = wait_for(lambda: events(rc, KEYS, "step.error"), what="step.error")
    assert err.step == "Broken" and err.data["field"] == "triggers.0.colour" and err.data["file"].endswith("broken_step.py")


def test_one_handler_on_http_and_queue_knows_which_trigger_fired(app, rc):
    """Given a sync step with an http and a queue trigger, when called both ways, then ctx.trigger says which fired
    (with the path params or the delivery priority), it gets the sync context, and ctx.enqueue returns one id per
    subscriber of the topic it fans out to."""
    resp = httpx.post(f"{app.url}/both/web", json={"k": "h1"})
    assert resp.status_code == 201 and resp.headers["x-kind"] == "web"
    ids = resp.json()["ids"]
    assert len(ids) == 2  # FanA and FanB
    via_http = wait_for(lambda: seen(rc, "both-h1"), what="the http run")
    assert via_http["trigger"] == {"type": "http", "method": "POST", "path": "/both/{kind}"}
    assert via_http["params"] == {"kind": "web"} and via_http["ctx"] == "SyncContext"
    assert (via_http["attempt"], via_http["max_attempts"], via_http["message_id"]) == (1, 1, None)
    assert via_http["thread"].startswith("iii-handler")

    send_topic(app, "both.in", {"k": "q1"}, "low")
    via_queue = wait_for(lambda: seen(rc, "both-q1"), what="the queue run")
    assert via_queue["trigger"] == {"type": "queue", "topic": "both.in", "priority": "low"}
    assert via_queue["ctx"] == "SyncContext" and via_queue["message_id"] and len(via_queue["ids"]) == 2
    assert via_queue["max_attempts"] == 4  # the default strategy: 3 retries


def send_topic(app, topic: str, data: dict, priority: str) -> str:
    """Enqueue through the real CLI (``send --topic``), as a user would; returns the trace id."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iii_console",
            "send",
            "--topic",
            topic,
            "--data",
            json.dumps(data),
            "--priority",
            priority,
            "--json",
        ],
        cwd=app.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])["trace_id"]


def test_enqueue_fans_out_to_sync_and_async_subscribers_on_one_trace_with_attempts(app, rc):
    """Given one http request whose handler enqueues to a topic with an async (ctx) and a failing sync
    subscriber, when it runs, then both copies carry the request's trace, the async one gets the async context,
    and the sync one sees ctx.attempt 1 then 2 with the queue's max_attempts."""
    resp = httpx.post(f"{app.url}/both/web", json={"k": "f1"})
    trace = resp.headers["x-trace-id"]
    a_id, b_id = sorted(resp.json()["ids"])
    b = wait_for(lambda: (v := seen(rc, "fanB-f1")) and "2" in v and v, what="FanB's second attempt")
    assert b["1"]["max_attempts"] == b["2"]["max_attempts"] == 3  # fan: max_retries 2
    assert b["1"]["message_id"] == b["2"]["message_id"]
    fan_a = [seen(rc, f"fanA-{i}") for i in (a_id, b_id)]
    [a] = [v for v in fan_a if v]
    assert a == {"trigger": {"type": "queue", "topic": "fan", "priority": "high"}, "ctx": "Context", "trace": trace}
    [log] = [e for e in events(rc, KEYS, "log") if e.trace_id == trace and e.data.get("message") == "both ran"]
    assert log.step == "Both" and log.data["k"] == "f1"
    wait_for(
        lambda: [e for e in events(rc, KEYS, "message.processed") if e.trace_id == trace and e.step == "FanB"],
        what="FanB processed on the request's trace",
    )


def test_state_trigger_runs_an_async_handler_on_the_writers_trace(app, rc):
    """Given an async state step on seen/both-*, when the http step writes seen/both-s1, then the state handler
    runs with ctx.trigger naming group and key, on the writer's trace, and its ctx.emit lands on that trace."""
    resp = httpx.post(f"{app.url}/both/web", json={"k": "s1"})
    trace = resp.headers["x-trace-id"]
    watched = wait_for(lambda: seen(rc, "both-s1", group="watched"), what="the state trigger")
    assert watched == {
        "trigger": {"type": "state", "group": "seen", "key": "both-s1"},
        "trace": trace,
        "change_trace": trace,
        "ctx": "Context",
    }
    note = wait_for(lambda: [e for e in events(rc, KEYS, "notification.sent") if e.trace_id == trace], what="notification")
    assert note[0].step == "Watch" and note[0].data == {"key": "both-s1"}


def test_cron_handlers_sync_with_ctx_only_and_async_with_the_tick(app, rc):
    """Given a sync (ctx) and an async (tick, ctx) cron step every second, when they fire, then each gets its kind
    of context and ctx.trigger says cron, with the expression that fired and the tick's times."""
    sync = wait_for(lambda: seen(rc, "cron-sync"), what="the sync cron run")
    assert sync["ctx"] == "SyncContext" and sync["trigger"]["type"] == "cron" and sync["trace"]
    asyn = wait_for(lambda: seen(rc, "cron-async"), what="the async cron run")
    scheduled, fired = asyn["tick"]
    assert asyn["ctx"] == "Context" and scheduled % 1000 == 0 and fired >= scheduled
    assert asyn["trigger"] == {"type": "cron", "expression": "* * * * * *", "scheduled_ms": scheduled, "fired_ms": fired}


def test_enqueue_with_delay_ms_starts_no_sooner(app, rc):
    """Given an async http handler that enqueues with delay_ms=700, when called, then the message starts at least
    700 ms after it was enqueued (event times, not a sleep in the test)."""
    resp = httpx.post(f"{app.url}/delay", headers={"content-type": "application/json"})  # no body, but never text/plain
    [mid] = resp.json()["ids"]
    wait_for(lambda: seen(rc, "later"), what="the delayed run")
    started = wait_for(lambda: [e for e in events(rc, KEYS, "message.started") if e.message_id == mid], what="started")
    [enq] = [e for e in events(rc, KEYS, "message.enqueued") if e.message_id == mid]
    assert started[0].ts - enq.ts >= 700


async def _concurrently(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*[client.get(url) for _ in range(n)])


def test_sync_http_handlers_each_get_a_thread(app):
    """Given a def handler that waits until 40 requests are inside it at once, when 40 arrive together, then all
    answer 200 (on the loop's default executor, 6 threads on two cores, the barrier would break after 30 s)."""
    got = asyncio.run(_concurrently(f"{app.url}/barrier/sync", PARTIES))
    assert [r.status_code for r in got] == [200] * PARTIES
    assert {r.json()["ctx"] for r in got} == {"SyncContext"}


def test_async_http_handlers_share_the_loop_without_blocking_it(app):
    """Given an async def handler that waits until 40 requests are inside it at once, when 40 arrive together,
    then all answer 200 with the async context (the loop interleaves them; none blocks it)."""
    got = asyncio.run(_concurrently(f"{app.url}/barrier/async", PARTIES))
    assert [r.status_code for r in got] == [200] * PARTIES
    assert {r.json()["ctx"] for r in got} == {"Context"}


def test_json_schema_body_is_checked_and_names_each_field(app, rc):
    """Given an http trigger whose body is a JSON-schema dict, when the body breaks it, then 400 lists each field,
    and nothing is written."""
    resp = httpx.post(f"{app.url}/both/web", json={"k": "", "extra": 1})
    assert resp.status_code == 400
    fields = {f["field"]: f["type"] for f in resp.json()["fields"]}
    assert fields == {"k": "minlength", "(body)": "additionalproperties"}
    assert httpx.post(f"{app.url}/both/web", json={}).json()["fields"] == [
        {"field": "k", "message": '"k" is a required property', "type": "required"}
    ]
    assert seen(rc, "both-") is None
    doc = httpx.get(f"{app.url}/openapi.json").json()
    schema = doc["paths"]["/both/{kind}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["k"]


def test_openapi_json_is_a_valid_openapi_3_1_document(app):
    """Given the running server, when /openapi.json is read, then it says 3.1 and the OpenAPI validator accepts it."""
    from openapi_spec_validator import validate

    doc = httpx.get(f"{app.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises, naming the first offending part, if it is not valid OpenAPI


def test_an_optional_field_is_valid_in_the_document_and_was_not_in_3_0(app):
    """Given the seed project's steps (pydantic models with optional fields: {"type": "null"}), when their document
    is built, then it validates as 3.1, and the same document labelled 3.0.3 does not (why it is 3.1)."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    from iii_console.adapters.openapi import document
    from iii_console.core.discovery import discover

    from ..helpers import ROOT

    doc = document(discover(ROOT / "steps").steps)
    assert '{"type": "null"}' in json.dumps(doc)
    validate(doc)
    with pytest.raises(OpenAPIValidationError):
        validate({**doc, "openapi": "3.0.3"})


def test_metrics_name_their_content_type_and_charset_once(app):
    """Given the running server, when /metrics is read, then its content-type is Prometheus's text format with one charset."""
    resp = httpx.get(f"{app.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"


def test_what_a_handler_returns_becomes_the_answer_or_a_reported_500(app, rc):
    """Given handlers returning a pydantic model, a {status, body, headers} dict with models and dataclasses, an
    object JSON cannot hold and a bad status, then the first two are sent as JSON and the last two answer 500 with
    the trace id, each with a step.error on that trace saying what was wrong."""
    model = httpx.get(f"{app.url}/answer/model")
    assert (model.status_code, model.json()) == (200, {"a": 1})
    wrapped = httpx.get(f"{app.url}/answer/wrapped")
    assert (wrapped.status_code, wrapped.json(), wrapped.headers["x-n"]) == (201, [{"a": 2}, {"b": 3}], "2")
    for kind, words, body in (
        ("object", "cannot be sent as JSON", None),
        ("status", "status 'ok': not an HTTP status code", None),
        ("echo", "cannot be sent as JSON", b'{"a": "\\ud800"}'),  # a lone surrogate, as JSON allows it written
        ("deep", "cannot be sent as JSON", None),
        ("header", "header 'x-a': a value with a line break", None),
        ("header-name", "not a valid HTTP header name", None),
        ("ref-name", "file name of type list", None),
        ("ref-type", "not a media type", None),
    ):
        resp = (
            httpx.post(f"{app.url}/answer/{kind}", content=body, headers={"content-type": "application/json"})
            if body
            else httpx.get(f"{app.url}/answer/{kind}")
        )
        assert "set-cookie" not in resp.headers
        assert resp.status_code == 500 and resp.json()["error"] == "handler failed"
        trace = resp.json()["trace_id"]
        [err] = wait_for(
            lambda: [e for e in events(rc, KEYS, "step.error") if e.trace_id == trace], what=f"the {kind} step.error"
        )
        assert err.step == "Answer" and words in err.error


def test_a_call_an_async_handler_forgot_to_await_is_reported_where_it_was_made(tmp_path, redis_url, r):
    """Given `async def` handlers (a queue step and an HTTP step) that call ctx.state.set and ctx.enqueue without
    `await`, when they run, then each forgotten call is a `log` event at error level naming the step, its file and
    line and the call, and says to await it (the call did nothing: nothing was written or enqueued)."""
    from iii_console.core.keys import Keys

    keys = Keys()
    step = (
        "from iii_console import Step, http, queue\n"
        "config = Step(name='Forgetful', triggers=[queue('jobs'), http('POST', '/forget')], enqueues=['later'])\n"
        "async def handler(data, ctx):\n"
        "    ctx.state.set('forgot', 'k', {'v': 1})\n"
        "    ctx.enqueue('later', {})\n"
        "    return {'status': 200, 'body': {}}\n"
    )
    make_project(tmp_path, {"forgetful_step.py": step}, "server:\n  port: 0\n", redis_url=redis_url)
    run = start_cli(tmp_path, "--no-ui")
    try:
        assert httpx.post(f"{run.url}/forget", json={}).status_code == 200  # the server's process
        cli_send(tmp_path, "jobs", {})  # and a worker process

        def reports():
            return [
                e for e in events(r, keys, "log") if e.data.get("level") == "error" and "was not awaited" in e.data["message"]
            ]

        wait_for(lambda: len(reports()) >= 4, timeout=30, what="the forgotten calls of both runs reported")
        got = reports()
        assert all(e.step == "Forgetful" for e in got)
        assert sorted(e.data["line"] for e in got) == [4, 4, 5, 5], [e.data for e in got]
        said = [e.data["message"] for e in got]
        assert (
            sum(".set(...) was not awaited" in m for m in said) == 2
            and sum(".enqueue(...) was not awaited" in m for m in said) == 2
        ), said
        assert all(e.data["file"].endswith("forgetful_step.py") and "write `await`" in e.data["message"] for e in got)
        assert r.hget(keys.state_group("forgot"), "k") is None  # it did nothing
    finally:
        run.stop()


def test_a_forgotten_await_in_a_step_file_a_reload_added_names_its_step(tmp_path, redis_url, r):
    """Given a running server with `--reload`, when an `async def` HTTP step that forgets an `await` is saved as a new
    file and called, then its report names the new step (the server's process learnt the file at the reload)."""
    from iii_console.core.keys import Keys

    keys = Keys()
    first = "from iii_console import Step, http\nconfig = Step(name='First', triggers=[http('GET', '/first')])\n"
    first += "def handler(data, ctx):\n    return {'status': 200, 'body': {}}\n"
    make_project(tmp_path, {"first_step.py": first}, "server:\n  port: 0\n", redis_url=redis_url)
    run = start_cli(tmp_path, "--no-ui", "--reload", "--role", "server")
    try:
        later = (
            "from iii_console import Step, http\n"
            "config = Step(name='Later', triggers=[http('POST', '/later')])\n"
            "async def handler(data, ctx):\n"
            "    ctx.state.set('forgot', 'k', {'v': 1})\n"
            "    return {'status': 200, 'body': {}}\n"
        )
        served = False
        for attempt in range(10):  # the file watcher may still be starting when the first save lands: save again
            (tmp_path / "steps" / "later_step.py").write_text(later + f"# save {attempt}\n")
            deadline = time.monotonic() + 3
            while not served and time.monotonic() < deadline:
                served = httpx.post(f"{run.url}/later", json={}).status_code == 200
                time.sleep(0.1)
            if served:
                break
        assert served, run.lines
        [report] = wait_for(
            lambda: [e for e in events(r, keys, "log") if "was not awaited" in str(e.data.get("message"))],
            timeout=20,
            what="the forgotten call reported",
        )
        assert report.step == "Later" and report.data["file"].endswith("later_step.py"), report
    finally:
        run.stop()
