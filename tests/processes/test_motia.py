"""Motia 1.0 Python step files on iii-console: Motia's own playground steps, unmodified
(``tests/motia_steps/``), and the Motia-shaped example (``examples/motia/``), each run under
a real ``iii-console --no-ui`` with real HTTP requests, queues, state, streams and cron."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from iii_console.core.cronexpr import next_fire, parse_cron
from iii_console.core.discovery import discover

from ..helpers import ROOT, events, events_once, make_project, start_cli, wait_for

PLAYGROUND = ROOT / "tests" / "motia_steps" / "playground" / "steps"
#: The same playground as Motia 1.0.1 to 1.0.3 wrote it: ``async def`` handlers that ``await`` the module-level
#: ``stateManager``, ``enqueue`` and streams (1.0.4 made those plain calls again).
PLAYGROUND_103 = ROOT / "tests" / "motia_steps" / "playground-1.0.3" / "steps"
PLAYGROUNDS = pytest.mark.parametrize("playground", [PLAYGROUND, PLAYGROUND_103], ids=["motia-1.0.4", "motia-1.0.3"])
UNSUPPORTED = ROOT / "tests" / "motia_steps" / "unsupported"
EXAMPLE = ROOT / "examples" / "motia" / "steps"
CONFIG = """
server:
  port: 0
workers:
  heartbeat_interval: 0.5
"""


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iii_console", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# ---- loading ----------------------------------------------------------------------------


@PLAYGROUNDS
def test_motias_playground_steps_load_unmodified_and_config_check_passes(tmp_path, playground):
    found = discover(playground)
    assert found.errors == []
    assert len(found.steps) == 28 and len(found.motia_steps) == 28
    assert "compatibility module" in found.motia
    by = {s.name: s for s in found.steps}
    assert [t.describe() for t in by["on-user-state-change"].triggers] == ["state */* (conditional)"]
    assert [t.describe() for t in by["on-todo-stream-event"].triggers] == ["stream todo */* (conditional)"]
    assert [t.describe() for t in by["CronWithCondition"].triggers] == ["cron 5 * * * * * *"]

    shutil.copytree(playground, tmp_path / "steps")
    make_project(tmp_path, {})
    res = _cli(tmp_path, "config", "check")
    assert res.returncode == 0, res.stdout + res.stderr
    warnings = res.stdout.splitlines()
    # `enqueues` is a declaration: topics nobody subscribes to are warnings, not problems
    assert warnings and all(w.startswith("warning: ") and "no step subscribes to topic" for w in warnings)
    assert any("'user.status.changed'" in w for w in warnings)
    assert "28 steps, 0 problems" in res.stderr
    listed = _cli(tmp_path, "steps", "--json")
    assert listed.returncode == 0 and "compatibility module" in json.loads(listed.stdout)["motia"]


def _load_one(tmp_path: Path, source: str):
    (tmp_path / "steps").mkdir(exist_ok=True)
    (tmp_path / "steps" / "x_step.py").write_text(textwrap.dedent(source))
    found = discover(tmp_path / "steps")
    assert found.steps == [] and len(found.errors) == 1, found
    return found.errors[0]


@pytest.mark.parametrize(
    "source, line, field, says",
    [
        (
            "from motia import http, init_iii\nconfig = {'name': 'X', 'triggers': [http('GET', '/x')]}\ndef handler(r): pass\n",
            1,
            None,
            "motia.init_iii is not available on iii-console (the engine client",
        ),
        ("from motia import ChannelReader\n", 1, None, "channels (streamed request bodies)"),
        (
            "from motia import http\n\nconfig = {\n    'name': 'X',\n    'triggers': [\n        http('GET', '/x', middleware=[lambda r, c, n: n()]),\n    ],\n}\n"
            "def handler(r): pass\n",
            6,
            "triggers.0.middleware",
            "middleware is not supported",
        ),
        (
            "from motia import queue\nconfig = {'name': 'X', 'triggers': [queue('t', config={'maxRetries': 9})]}\ndef handler(d): pass\n",
            2,
            "triggers.0.config",
            "queues.TOPIC.max_retries",
        ),
        (
            "from motia import queue\nconfig = {'name': 'X', 'triggers': [queue('t')]}\n\ndef handler():\n    pass\n",
            4,
            "handler",
            "takes (input) or (input, ctx)",
        ),
        (
            "from motia import logger\nconfig = {\n    'name': 'X',\n    'triggers': [{'type': 'event', 'topic': 'orders'}],\n"
            "    'emits': ['done'],\n}\ndef handler(d, ctx): pass\n",
            4,
            "triggers.0.type",
            '\'event\' triggers are Motia\'s older name for queue triggers: write {"type": "queue", "topic": "orders"}, and "enqueues" for "emits"',
        ),
        (
            "config = {\n    'name': 'X',\n    'triggers': [{'type': 'queue', 'topic': 'orders'}],\n    'emits': ['done'],\n}\n"
            "def handler(d, ctx): pass\n",
            4,
            "emits",
            "'emits' is Motia's older name for 'enqueues': write \"enqueues\": [\"done\"]",
        ),
    ],
)
def test_what_motia_has_and_iii_console_cannot_do_fails_at_load_naming_file_line_and_the_equivalent(
    tmp_path, source, line, field, says
):
    err = _load_one(tmp_path, source)
    assert err.file.endswith("x_step.py") and err.line == line and err.field == field, err
    assert says in str(err), str(err)


def test_a_streamed_http_handler_is_refused_at_load_with_the_json_equivalent(tmp_path):
    found = discover(UNSUPPORTED)
    [err] = found.errors
    assert err.file.endswith("api_steps/sse_step.py") and err.line == 23 and err.field == "handler"
    assert "MotiaHttpArgs" in str(err) and "take an ApiRequest" in str(err) and "return ApiResponse" in str(err)


def test_the_installed_motia_package_is_used_and_named_when_there_is_one(tmp_path):
    (tmp_path / "motia").mkdir()
    (tmp_path / "motia" / "__init__.py").write_text("REAL = True\n")
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "real_step.py").write_text("from motia import REAL\nconfig = {'name': 'Real', 'triggers': []}\n")
    code = (
        "from iii_console.core.motia.adapt import install; import motia; print(install()); print(motia.REAL)\n"
        "from iii_console.core.discovery import discover; [e] = discover('steps').errors; print(e)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    installed = f"the installed motia package ({tmp_path / 'motia' / '__init__.py'})"
    assert out.stdout.splitlines()[:2] == [installed, "True"]
    assert out.stdout.splitlines()[2] == (
        f"{tmp_path / 'steps' / 'real_step.py'}, step 'Real': this step imports {installed}, whose "
        "objects need Motia's engine; run iii-console from an environment without it, where "
        "`import motia` gets iii-console's compatibility module"
    )


def test_a_dotenv_file_is_read_under_the_environment_and_a_bad_line_is_named(tmp_path):
    from iii_console.core.config import load_dotenv
    from iii_console.core.errors import ConfigError

    (tmp_path / ".env").write_text("# comment\nA=1\nexport B='two words'\nC=\"x # y\"\nD=3 # note\nKEEP=file\n")
    env = {"KEEP": "environment"}
    assert load_dotenv(tmp_path, env) == {"A": "1", "B": "two words", "C": "x # y", "D": "3"}
    assert env["KEEP"] == "environment"
    (tmp_path / ".env").write_text("A=1\nthis is not a variable\n")
    with pytest.raises(ConfigError, match=r"\.env:2: expected KEY=value"):
        load_dotenv(tmp_path, {})


def test_motias_cron_days_of_week_count_from_sunday_1_as_its_engine_does(tmp_path):
    """Motia's engine parses cron with the Rust `cron` crate, which numbers days 1 (Sunday) to 7
    (Saturday), Quartz-style; classic cron's 2 would be Tuesday."""
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "weekly_step.py").write_text(
        "from motia import cron\nconfig = {'name': 'Weekly', 'triggers': [cron('0 0 9 ? * 2'), cron('0 0 9 * * 2-6/2,1')]}\n"
        "def handler(input):\n    pass\n"
    )
    [step] = discover(tmp_path / "steps").steps
    monday_trigger, other = (t.expression for t in step.triggers)
    assert (monday_trigger, other) == ("0 0 9 * * mon", "0 0 9 * * mon-fri/2,sun")
    saturday = datetime(2030, 6, 1, 12, tzinfo=UTC)  # a Saturday
    assert next_fire(monday_trigger, saturday) == datetime(2030, 6, 3, 9, tzinfo=UTC)
    assert next_fire(other, saturday) == datetime(2030, 6, 2, 9, tzinfo=UTC)  # Sunday, then Mon, Wed, Fri
    assert next_fire(other, datetime(2030, 6, 3, 10, tzinfo=UTC)) == datetime(2030, 6, 5, 9, tzinfo=UTC)


def test_motias_seven_field_cron_has_seconds_first_and_a_year_last():
    after = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert next_fire("5 * * * * * *", after) == datetime(2030, 5, 1, 12, 0, 5, tzinfo=UTC)
    assert next_fire("0 30 9 1 1 * 2031", after) == datetime(2031, 1, 1, 9, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="cron field year '20x1'"):
        parse_cron("0 0 0 1 1 * 20x1")


# ---- end to end -------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, redis_url):
    started = []

    def start(steps: Path, config: str = CONFIG, dotenv: str = ""):
        shutil.copytree(steps, tmp_path / "steps")
        make_project(tmp_path, {}, config, redis_url=redis_url)
        if dotenv:
            (tmp_path / ".env").write_text(dotenv)
        run = start_cli(tmp_path, "--no-ui")
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def _logs(r, keys, step: str, message: str | None = None):
    return [e for e in events(r, keys, "log") if e.step == step and (message is None or e.data["message"] == message)]


@pytest.mark.slow
@PLAYGROUNDS
def test_motias_playground_answers_enqueues_and_reacts_as_under_motia(project, r, keys, playground):
    # the playground's .env.example, as its README says to copy it
    app = project(playground, dotenv="GREETING_PREFIX=hello\nAPP_NAME=MotiaPlayground\nSECRET_KEY=my-secret-key-123\n")
    url = app.url
    with httpx.Client(base_url=url, timeout=10) as http:
        # the project's .env is in the environment of the steps
        assert http.get("/dotenv-check").json() == {
            "greeting_prefix": "hello",
            "app_name": "MotiaPlayground",
            "has_secret_key": True,
        }
        # ApiResponse objects are the answer; a one-argument handler gets the request
        greet = http.get("/greet", params={"name": "ada"})
        assert greet.status_code == 200 and greet.json() == {"name": "ada", "message": "Hello, ada!"}
        assert http.get("/greetings/ada").json() == {"name": "ada", "message": "Hello, ada!"}  # :name path, stream get
        assert http.get("/greetings").json() == {"greetings": [{"name": "ada", "message": "Hello, ada!"}]}
        assert http.get("/greetings/summary").json()["count"] == 1  # ctx.match from a sync handler
        deleted = http.delete("/greetings/ada")
        assert deleted.status_code == 204 and deleted.content == b""
        assert http.get("/greetings/ada").status_code == 404

        # a condition false on an HTTP trigger is Motia's 422; true runs the handler
        assert http.post("/orders/premium", json={"amount": 5000, "user": {"verified": True}}).json() == {
            "error": "Request condition not met",
            "skipped": True,
        }
        assert http.post("/orders/manual", json={"user": {"verified": False}}).status_code == 422
        manual = http.post("/orders/manual", json={"user": {"verified": True}})
        assert manual.status_code == 200 and manual.json() == {"message": "Order processed via API"}

        # dict answers, module-level stateManager, a state trigger with only a condition
        user = http.post("/users/u1/status", json={"status": "away"})
        assert user.status_code == 200 and user.json() == {"user_id": "u1", "status": "away"}

        # streams: set returns Motia's {old_value, new_value}; a stream trigger fires
        todo = http.post("/todo", json={"description": "buy milk"}).json()
        assert todo["old_value"] is None and todo["new_value"]["description"] == "buy milk"
        created = http.post("/todos", json={"description": "x", "group_id": "g1"})
        assert created.status_code == 201
        # a DELETE with a JSON body reaches the handler
        assert http.request("DELETE", "/todo", json={"todo_id": todo["new_value"]["id"]}).json() == {"success": True}

        # module-level enqueue from an HTTP step, queue conditions, ctx.trigger.topic
        order = http.post("/orders", json={"description": "d", "amount": 5000})
        assert order.status_code == 201
        trace = order.headers["x-trace-id"]

    # a generous first wait: the worker process may still be starting on a loaded machine
    [changed] = wait_for(lambda: _logs(r, keys, "on-user-state-change", "User state changed"), timeout=45, what="state trigger")
    assert changed.data["group_id"] == "users" and changed.data["item_id"] == "u1"
    assert changed.data["new_value"] == {"status": "away"}

    def kinds():
        return sorted(
            (e.data["group_id"], e.data["event_type"]) for e in _logs(r, keys, "on-todo-stream-event", "Todo stream event")
        )

    wait_for(lambda: len(kinds()) == 3, what="3 stream events")
    assert kinds() == [("g1", "create"), ("inbox", "create"), ("inbox", "delete")]
    [todo_event] = [e for e in _logs(r, keys, "on-todo-stream-event", "Todo stream event") if e.data["group_id"] == "g1"]
    assert todo_event.data["stream_name"] == "todo" and todo_event.data["data_"]["description"] == "x"
    assert not _logs(r, keys, "on-user-state-change", "User state changed")[1:]  # stream items are not state there

    [high] = wait_for(lambda: _logs(r, keys, "SingleConditionTest", "Processing high-value order"), what="queue step")
    assert high.trace_id == trace and high.message_id and high.data["data_"]["amount"] == 5000  # log fields kept
    [mixed] = wait_for(lambda: _logs(r, keys, "MixedTriggersWithConditions", "Processing order (event)"), what="mixed")
    assert mixed.data["topic_"] == "order.created"
    [skipped] = wait_for(lambda: _logs(r, keys, "MultipleConditionsTest"), what="condition skip")
    assert skipped.data["message"] == "skipped: the trigger's condition is false" and skipped.trace_id == trace
    assert not [e for e in events(r, keys, "message.failed")]

    # cron: GreetingsSummary runs every 5 s (6 fields, seconds first) through the ctx.match cron branch
    [tick, *_] = events_once(r, keys, "log", 1, where=lambda e: e.data.get("message") == "Greetings summary (cron)", timeout=15)
    assert tick.step == "GreetingsSummary" and tick.data["count"] == 0 and tick.message_id
    assert not [e for e in events(r, keys, "step.error")]


@pytest.mark.slow
def test_motia_shaped_example_runs_http_queue_threads_state_streams_and_cron(project, r, keys):
    app = project(EXAMPLE)
    with httpx.Client(base_url=app.url, timeout=10) as http:
        placed = http.post("/orders/eu", json={"id": "o1", "sku": "tea", "qty": 2})
        assert placed.status_code == 201 and placed.headers["location"] == "/orders/eu/o1"
        trace = placed.headers["x-trace-id"]
        assert placed.json() == {"id": "o1", "trace_id": trace}
        dry = http.post("/orders/eu", params={"dry_run": "1"}, json={"id": "o2", "sku": "tea", "qty": 1})
        assert dry.status_code == 200 and dry.json() == {"would_place": {"id": "o2", "sku": "tea", "qty": 1, "region": "eu"}}
        bad = http.post("/orders/eu", json={"id": "o3", "sku": "tea", "qty": "lots"})
        assert bad.status_code == 400 and "qty" in bad.text
        assert http.post("/orders/eu", json={"id": "o0", "sku": "tea", "qty": 0}).status_code == 201
        trace5 = http.post("/orders/us", json={"id": "o5", "sku": "tea", "qty": 1}).headers["x-trace-id"]

        wait_for(
            lambda: r.hget(keys.state_group("stats"), "receipts"), timeout=45, what="receipt counted"
        )  # the worker may be starting
        assert json.loads(r.hget(keys.state_group("orders"), "o1"))["status"] == "fulfilled"
        assert json.loads(r.hget(keys.state_group("_stream.receipts"), "shop/o1")) == {"order_id": "o1", "qty": 2}
        wait_for(lambda: json.loads(r.hget(keys.state_group("stats"), "receipts")) == {"count": 2}, what="two receipts")
        assert http.get("/orders/eu/o1").json()["status"] == "fulfilled"
        wait_for(lambda: http.get("/audit").json() == {"n": 2}, what="multi_trigger_step's queue handler")
        missing = http.get("/orders/eu/nope")
        assert missing.status_code == 404 and missing.json() == {"error": "no such order"}

    # the thread the handler started logged, wrote state and enqueued on the run's trace and message
    [fulfil] = [e for e in _logs(r, keys, "FulfilOrder", "fulfilling") if e.data["order_id"] == "o1"]
    assert fulfil.trace_id == trace and fulfil.message_id
    assert fulfil.data["order_id"] == "o1" and fulfil.data["topic_"] == "order.placed" and fulfil.data["qty"] == 2
    checks = {e.data["order_id"]: e for e in _logs(r, keys, "FulfilOrder", "checked")}  # from the shared thread pool
    assert checks["o1"].trace_id == trace and checks["o1"].message_id == fulfil.message_id
    wait_for(
        lambda: "o5" in {e.data["order_id"] for e in _logs(r, keys, "FulfilOrder", "checked")}, what="the second order's check"
    )
    [check5] = [e for e in _logs(r, keys, "FulfilOrder", "checked") if e.data["order_id"] == "o5"]
    assert check5.trace_id == trace5 != trace  # each task in the run that submitted it, though the pool's threads are reused
    [write] = [
        e
        for e in events(r, keys, "state.changed")
        if e.data["group"] == "orders" and e.data["key"] == "o1" and e.data["new"]["status"] == "fulfilled"
    ]
    assert write.trace_id == trace and write.step == "FulfilOrder" and write.message_id == fulfil.message_id
    [seen] = wait_for(
        lambda: [e for e in _logs(r, keys, "LookupOrder", "fulfilment seen") if e.data["order_id"] == "o1"],
        what="async match branch",
    )
    assert seen.trace_id == trace and seen.data["order_id"] == "o1"
    [receipt] = [e for e in _logs(r, keys, "WriteReceipt", "receipt written") if e.data["order_id"] == "o1"]
    assert receipt.trace_id == trace and receipt.data["old_status"] == "placed"
    [counted] = [e for e in _logs(r, keys, "CountReceipts", "receipt counted") if e.data["item"] == "o1"]
    assert counted.data == {"level": "info", "message": "receipt counted", "stream": "receipts", "item": "o1", "kind": "create"}
    [placing] = [e for e in _logs(r, keys, "PlaceOrder", "placing") if e.trace_id == trace]
    assert placing.data["order_id"] == "o1"
    [placed_log] = [e for e in _logs(r, keys, "PlaceOrder", "order placed") if e.trace_id == trace]
    assert placed_log.data["path"] == "/orders/:region" and placed_log.data["api"] is True
    # qty 0: the queue condition skipped the run; the order stays placed
    [skip] = _logs(r, keys, "FulfilOrder", "skipped: the trigger's condition is false")
    assert json.loads(r.hget(keys.state_group("orders"), "o0"))["status"] == "placed" and skip.message_id

    # cron in Motia's 7-field form, every 2 s; the handler gets None
    wait_for(
        lambda: (json.loads(r.hget(keys.state_group("clock"), "ticks") or "{}")).get("n", 0) >= 2, timeout=15, what="2 ticks"
    )
    # its condition reads state through the module-level stateManager: paused, a tick is skipped
    r.hset(keys.state_group("clock"), "paused", "true")
    [paused, *_] = wait_for(lambda: _logs(r, keys, "Tick", "skipped: the trigger's condition is false"), what="a paused tick")
    assert paused.data["trigger"] == "cron" and paused.message_id
    assert not [e for e in events(r, keys, "step.error")] and not [e for e in events(r, keys, "message.failed")]


def test_the_steps_view_draws_virtual_links_condition_only_state_triggers_and_streams():
    from iii_console.tui.tabs.system import flow_text

    steps = {s.name: s.describe() for s in discover(EXAMPLE).steps}
    writers = {"orders": {"PlaceOrder", "FulfilOrder"}, "_stream.receipts": {"WriteReceipt"}}
    text = flow_text(steps, [], writers).plain
    assert "virtual shop.checkout ┈▷ PlaceOrder" in text
    assert "virtual warehouse.pick-list ┈▷ (outside)" in text
    assert "state */* if … ─▶ WriteReceipt" in text  # reached from the steps seen writing "orders"
    assert "stream receipts shop/* if … ─▶ CountReceipts" in text
    assert "queue order.placed ─▶ FulfilOrder" in text
    assert "virtual order.approved ┈▷ (outside)" in text and "ManualApproval" in text  # a noop step, drawn only


@pytest.mark.slow
def test_a_project_with_many_subscriptions_starts_its_worker_without_running_out_of_connections(tmp_path, redis_url, r, keys):
    """30 subscriptions are 90 queues (and their delay queues), each with a consumer blocked on a
    connection of the worker's pool; redis-py 8 caps a pool at 100 by default, which crashed the
    worker at start ("Too many connections") as soon as Motia's playground was loaded."""
    steps = {
        f"s{i}_step.py": f"from iii_console import Step, queue\nconfig = Step(name='S{i}', triggers=[queue('fan')])\n"
        f"def handler(data, ctx):\n    pass\n"
        for i in range(30)
    }
    steps["in_step.py"] = (
        "from iii_console import Step, http\nconfig = Step(name='In', triggers=[http('POST', '/in')], enqueues=['fan'])\n"
        "def handler(req, ctx):\n    ctx.enqueue('fan', {})\n    return {'status': 202, 'body': {}}\n"
    )
    make_project(tmp_path, steps, CONFIG, redis_url=redis_url)
    app = start_cli(tmp_path, "--no-ui")
    try:
        assert httpx.post(f"{app.url}/in", json={}).status_code == 202
        events_once(r, keys, "message.processed", 30, timeout=45)
        crashed = [e for e in events(r, keys, "log") if "exited with" in e.data.get("message", "")]
        assert crashed == [] and not [x for x in app.lines if "Too many connections" in x]
    finally:
        assert app.stop() == 0


def _run_ctx(r, keys):
    from iii_console.core.context import SyncContext
    from iii_console.core.emitter import null_emitter
    from iii_console.core.state import StateStore

    return SyncContext(
        trace_id="t-1", step="Test", emitter=null_emitter(), state=StateStore(r, keys).bind(trace_id="t-1", step="Test")
    )


def test_streams_and_state_manager_speak_motias_api_on_the_state_store(r, keys):
    from iii_console.core.motia import run as motia_run

    todo, manager = motia_run.Stream("todo"), motia_run.StateManager()
    with pytest.raises(RuntimeError, match="outside a step run"):
        todo.get("inbox", "t1")
    token = motia_run.run_in(_run_ctx(r, keys))
    try:
        assert todo.set("inbox", "t1", {"done": False}) == {"old_value": None, "new_value": {"done": False}}
        assert todo.update("inbox", "t1", [{"type": "set", "path": "done", "value": True}]) == {
            "old_value": {"done": False},
            "new_value": {"done": True},
        }
        todo.set("work", "t2", {"done": False})
        assert todo.get("inbox", "t1") == {"done": True} and todo.get_group("inbox") == [{"done": True}]
        assert todo.list("work") == [{"done": False}] and todo.list_groups() == ["inbox", "work"]
        with pytest.raises(ValueError, match="without '/'"):
            todo.set("a/b", "t3", {})
        todo.delete("inbox", "t1")
        assert todo.get("inbox", "t1") is None and json.loads(r.hget(keys.state_group("_stream.todo"), "work/t2")) == {
            "done": False
        }

        assert manager.set("users", "u1", {"n": 1}) == {"old_value": None, "new_value": {"n": 1}}
        assert manager.update("users", "u1", [{"type": "increment", "path": "n", "by": 2}])["new_value"] == {"n": 3}
        manager.set("users", "u2", {"n": 0})
        assert sorted(manager.list("users"), key=lambda v: v["n"]) == [{"n": 0}, {"n": 3}]
        assert manager.list_groups() == ["users"]  # streams are not state groups to Motia code
        assert manager.delete("users", "u2") == {"n": 0}
        manager.clear("users")
        assert manager.list("users") == [] and manager.get("users", "u1") is None
    finally:
        motia_run.leave(token)


@pytest.mark.anyio
async def test_the_state_view_shows_a_stream_and_its_items_live(redis_url, r, keys):
    from textual.widgets import OptionList

    from iii_console.core.motia import run as motia_run

    from ..helpers import SIZE, console, started, until

    def write(item: str) -> None:
        token = motia_run.run_in(_run_ctx(r, keys))
        try:
            motia_run.Stream("todo").set("inbox", item, {"text": item})
        finally:
            motia_run.leave(token)

    write("t1")
    app = console(redis_url=redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("5")
        groups = app.query_one("#state-groups", OptionList)
        await until(pilot, lambda: groups.option_count == 1, "the stream's group")
        assert str(groups.get_option_at_index(0).prompt).startswith("stream todo")
        keys_table = app.query_one("#state-keys")
        await until(pilot, lambda: "inbox/t1" in [str(k.value) for k in keys_table.rows], "the stream's item")
        write("t2")
        await until(pilot, lambda: "inbox/t2" in [str(k.value) for k in keys_table.rows], "an item written after opening")


@pytest.mark.parametrize(
    "result, answer",
    [
        ("ApiResponse", {"status": 201, "body": {"id": 1}, "headers": {"X-A": "b"}}),
        ({"status": 202, "body": [1], "headers": {"X-A": "b"}}, {"status": 202, "body": [1], "headers": {"X-A": "b"}}),
        ({"status_code": 418, "body": "tea"}, {"status": 418, "body": "tea", "headers": {}}),
        ({"id": 1}, {"status": 200, "body": None, "headers": {}}),  # a dict is read as an answer, as Motia's runtime does
        ("text", {"status": 200, "body": None, "headers": {}}),
        (None, {"status": 200, "body": None, "headers": {}}),
    ],
)
def test_a_handlers_result_becomes_the_http_answer_motia_would_send(result, answer):
    from iii_console.core.motia import ApiResponse
    from iii_console.core.motia.adapt import http_answer

    if result == "ApiResponse":
        result = ApiResponse(status=201, body={"id": 1}, headers={"X-A": "b"})
    assert http_answer(result) == answer


#: The public names of motia's ``__init__.py`` (``__all__`` at MotiaDev/motia 9fd2644).
MOTIA_ALL = [
    "get_instance",
    "init_iii",
    "ChannelReader",
    "ChannelWriter",
    "Motia",
    "setup_step_endpoint",
    "generate_step_id",
    "api",
    "http",
    "queue",
    "cron",
    "state",
    "stream",
    "schema_to_json_schema",
    "step",
    "StepDefinition",
    "StepBuilder",
    "multi_trigger_step",
    "MultiTriggerStepBuilder",
    "ApiMiddleware",
    "ApiRequest",
    "ApiResponse",
    "ApiRouteMethod",
    "MotiaHttpRequest",
    "MotiaHttpArgs",
    "MotiaHttpResponse",
    "ApiTrigger",
    "CronTrigger",
    "Enqueue",
    "Enqueuer",
    "FlowContext",
    "QueryParam",
    "QueueTrigger",
    "StateTrigger",
    "StateTriggerInput",
    "Step",
    "StepConfig",
    "StreamConfig",
    "StreamAuthInput",
    "StreamAuthResult",
    "StreamEvent",
    "StreamSubscription",
    "StreamTrigger",
    "StreamTriggerInput",
    "TriggerCondition",
    "TriggerConfig",
    "TriggerInfo",
    "TriggerInput",
    "enqueue",
    "logger",
    "Stream",
    "StateManager",
    "stateManager",
    "is_api_trigger",
    "is_queue_trigger",
    "is_cron_trigger",
    "is_state_trigger",
    "is_stream_trigger",
    "is_api_step",
    "is_queue_step",
    "is_cron_step",
    "is_state_step",
    "is_stream_step",
    "get_api_triggers",
    "get_queue_triggers",
    "get_cron_triggers",
    "get_state_triggers",
    "get_stream_triggers",
    "tracing",
]


def test_every_public_name_of_motia_is_there_or_says_what_to_use_instead():
    import iii_console.core.motia as compat

    missing = []
    for name in MOTIA_ALL:
        try:
            getattr(compat, name)
        except compat.Unsupported as exc:
            assert name in compat.UNSUPPORTED and f"motia.{name} is not available on iii-console (" in str(exc)
        except AttributeError:
            missing.append(name)
    assert missing == []
    assert set(compat.__all__) | set(compat.UNSUPPORTED) == set(MOTIA_ALL)


def test_step_builders_and_guards_work_on_motias_objects(tmp_path):
    from iii_console.core.motia import (
        Step,
        StepConfig,
        cron,
        get_api_triggers,
        http,
        is_api_step,
        is_api_trigger,
        is_cron_step,
        is_queue_trigger,
        queue,
        step,
    )

    config = {"name": "Built", "triggers": [http("GET", "/built"), cron("0 0 * * * *")]}
    built = step(config).handle(lambda request, ctx: {"status": 200, "body": "ok"})
    assert isinstance(built.config, StepConfig) and is_api_trigger(built.config.triggers[0])
    assert is_queue_trigger(queue("t")) and not is_queue_trigger(http("GET", "/x"))
    motia_step = Step(file_path="x_step.py", config=built.config)
    assert is_api_step(motia_step) and is_cron_step(motia_step) and get_api_triggers(motia_step)[0].path == "/built"

    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "built_step.py").write_text(
        "from motia import http, step\n"
        "def answer(request, ctx):\n    return {'status': 200, 'body': ctx.trigger.path}\n"
        "config = step({'name': 'Built', 'triggers': [http('GET', '/built')]}, answer)\n"
    )
    [loaded] = discover(tmp_path / "steps").steps  # config is a StepDefinition: its handler is the step's
    assert loaded.name == "Built" and loaded.handler.motia_handler.__name__ == "answer"
