"""A first message on any project: the console's hint, its send form and ``iii-console send``
name the routes the project serves, with bodies fitting their schemas (``core/examples.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from textual.widgets import Input, Label, RichLog, Static

from iii_console.core.config import Config, load_config
from iii_console.core.examples import example_body, example_of, post_routes, topic_targets
from iii_console.core.steps import Step, http, queue
from iii_console.runtime.supervisor import Supervisor
from iii_console.tui.screens import SendScreen
from iii_console.tui.tabs.live import first_message_hint

from ..helpers import console, log_text, notes, plain, started, until

SIZE = (200, 45)


class Item(BaseModel):
    name: str
    tags: list[str] = []


class Shipment(BaseModel):
    to: str
    weight: float
    express: bool
    items: list[Item]
    note: str | None = None
    kind: str = "parcel"


def test_an_example_body_holds_each_required_field_with_a_placeholder_of_its_type() -> None:
    """Given a pydantic model and a JSON-schema dict, when an example is built, then it has the required fields only, typed, and validates."""
    got = example_of(Shipment)
    assert got == {"to": "example", "weight": 1, "express": True, "items": []}
    Shipment.model_validate(got)
    schema = {
        "type": "object",
        "required": ["id", "level", "size", "at"],
        "properties": {
            "id": {"type": "string"},
            "level": {"enum": ["info", "warn"]},
            "size": {"type": ["integer", "null"]},
            "at": {"type": "object", "required": ["x"], "properties": {"x": {"type": "number", "default": 2.5}}},
            "ignored": {"type": "string"},
        },
    }
    assert example_body(schema) == {"id": "example", "level": "info", "size": 1, "at": {"x": 2.5}}
    assert example_body({"$ref": "#/$defs/Loop", "$defs": {"Loop": {"$ref": "#/$defs/Loop"}}}) is None  # bounded
    assert example_body({"type": "object", "required": True, "properties": []}) == {}  # odd shapes: no crash
    assert example_body({"type": "array", "minItems": 2, "items": {"type": "integer"}}) == [1]


def test_the_registry_carries_each_routes_example_and_the_hint_follows_it() -> None:
    """Given steps with a POST route, a raw-body route and a topic, when described for the registry, then the hint names the JSON route with its example; with no route, a topic."""
    steps = {
        "Ship": Step(name="Ship", triggers=[http("POST", "/shipments", body=Shipment)]).describe(),
        "Upload": Step(name="Upload", triggers=[http("POST", "/uploads", accept=["image/*"])]).describe(),
        "Get": Step(name="Get", triggers=[http("POST", "/shipments/{id}", body=Shipment)]).describe(),
        "Pack": Step(name="Pack", triggers=[queue("shipments.made", input=Item)]).describe(),
    }
    assert json.loads(json.dumps(steps)) == steps  # what the registry stores: plain JSON
    assert [r.path for r in post_routes(steps)] == ["/shipments"]
    assert post_routes(steps)[0].example == {"to": "example", "weight": 1, "express": True, "items": []}
    text = first_message_hint("http://127.0.0.1:4000", steps).plain
    assert "curl -X POST http://127.0.0.1:4000/shipments" in text and "/messages" not in text
    assert 'iii-console send --path /shipments --data \'{"to": "example"' in text

    only_topic = {"Pack": steps["Pack"]}
    assert [t.topic for t in topic_targets(only_topic)] == ["shipments.made"]
    text = first_message_hint("http://127.0.0.1:4000", only_topic).plain
    assert 'iii-console send --topic shipments.made --data \'{"name": "example"}\'' in text
    assert "curl" not in text and "  s  " not in text  # nothing for the form to post to

    # No registry (yet): the seed project's /messages, as before.
    assert "curl -X POST http://127.0.0.1:4000/messages" in first_message_hint("http://127.0.0.1:4000", {}).plain


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "III_CONFIG", "VIRTUAL_ENV")}


@pytest.fixture
def scaffolded(tmp_path: Path, redis_url: str) -> Config:
    """A project made by ``iii-console new``, on the test's Redis and any free port."""
    made = subprocess.run(
        [sys.executable, "-m", "iii_console", "new", "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env()
    )
    assert made.returncode == 0, made.stderr
    cfg_file = tmp_path / "demo" / "iii-config.yaml"
    text = cfg_file.read_text()
    assert "port: 3111" in text
    text = text.replace("port: 3111", "host: 127.0.0.1\n  port: 0")
    cfg_file.write_text(text + f"redis:\n  url: {redis_url}\n")
    return load_config(cfg_file, env={})


@pytest.fixture
async def running(scaffolded: Config) -> AsyncIterator[Supervisor]:
    sup = Supervisor(scaffolded)
    await sup.start()
    try:
        yield sup
    finally:
        await sup.stop()


async def _cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``iii-console send ARGS`` in the project, off this event loop (where the server runs)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "iii_console", "send", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_scaffolded_project_gets_a_working_hint_a_form_on_its_route_and_a_clear_send(
    running: Supervisor, scaffolded: Config, redis_url: str
) -> None:
    """Given `iii-console new demo` running, when the console opens, then its hint's curl is accepted, its form posts to /orders (a bad body comes back naming the field), and `send TEXT` says which routes exist."""
    base = f"http://127.0.0.1:{running.port}"
    app = console(redis_url=redis_url, server_url=base)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        problems = app.query_one("#problems", RichLog)
        await until(pilot, lambda: "/orders" in log_text(problems), "the hint naming the project's route")
        hint = log_text(problems)
        assert "/messages" not in hint and "iii-console send --path /orders" in hint
        # The panel wraps its lines: read the command back as one line.
        curl = re.search(r"curl .*?(?= iii-console send)", " ".join(hint.split()))
        assert curl, hint
        argv = shlex.split(curl.group(0))
        url, body = argv[argv.index("-X") + 2], argv[argv.index("-d") + 1]
        assert url == f"{base}/orders"
        async with httpx.AsyncClient(timeout=10) as client:  # the server runs in this event loop
            answer = await client.post(url, content=body, headers={"content-type": "application/json"})
        assert answer.status_code // 100 == 2, answer.text

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form")
        form = app.screen
        text = form.query_one("#send-text", Input)
        assert f"POST {base}/orders" in plain(form.query_one("#send-title", Label).content)
        assert json.loads(text.value) == {"sku": "example", "qty": 1}
        text.value = '{"sku": "form-1", "qty": 3}'
        await pilot.press("enter")
        await until(pilot, lambda: f"1 message sent to {base}/orders" in notes(app), "the form's post accepted")

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form again")
        app.screen.query_one("#send-text", Input).value = '{"sku": "form-2", "qty": "many"}'
        await pilot.press("enter")

        def refused() -> Any:
            return isinstance(app.screen, SendScreen) and plain(app.screen.query_one("#send-error", Static).content)

        await until(pilot, lambda: "qty" in (refused() or ""), "the form back, naming the refused field")
        assert "400" in refused()
        assert json.loads(app.screen.query_one("#send-text", Input).value) == {"sku": "form-2", "qty": "many"}

    project = scaffolded.project_dir
    said = await _cli(project, "hello", "--url", base)
    assert said.returncode != 0
    assert "no such route" not in said.stderr and "has no POST /messages" in said.stderr, said.stderr
    assert "POST /orders" in said.stderr and "--path /orders --data" in said.stderr
    assert "--topic orders.placed --data" in said.stderr
    # The line it suggests works as given.
    assert said.stderr.count("\n") == 1  # one line, as every error
    suggested = re.search(r"iii-console send (--path /orders .*?); or enqueue", said.stderr)
    assert suggested, said.stderr
    argv = shlex.split(suggested.group(1))
    posted = await _cli(project, *argv, "--url", base)
    assert posted.returncode == 0, posted.stderr
    assert re.search(r"sent 1 message", posted.stderr)

    bad = await _cli(project, "--path", "/orders", "--data", '{"sku": "x"}', "--url", base)
    assert bad.returncode != 0 and "qty" in bad.stderr and "400" in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--path", "/orders"], "--path needs --data"),
        (["--path", "orders", "--data", "{}"], "must start with '/'"),
        (["--path", "/orders", "--topic", "t", "--data", "{}"], "not both"),
        (["hi", "--path", "/orders", "--data", "{}"], "not TEXT"),
        (["--data", "{}"], "--data needs --topic or --path"),
    ],
)
def test_send_path_refuses_what_it_cannot_post_naming_the_option(args: list[str], says: str) -> None:
    """Given `send --path` used wrongly, when run, then it exits 2 with one line naming what is wrong."""
    from click.testing import CliRunner

    from iii_console.cli import cli as group

    res = CliRunner().invoke(group, ["send", *args])
    assert res.exit_code == 2 and says in res.stderr, res.stderr


REFUND_STEP = """
from pydantic import BaseModel

from iii_console import HttpRequest, Step, SyncContext, http


class Refund(BaseModel):
    order_sku: str
    amount: float
    reason: str = "damaged"


config = Step(name="Refund", triggers=[http("POST", "/refunds", body=Refund)], flows=["orders"])


def handler(req: HttpRequest, ctx: SyncContext):
    ctx.state.set("refunds", req.body.order_sku, req.body.model_dump())
    return {"status": 201, "body": {"refunded": req.body.amount}}
"""


@pytest.fixture
async def two_routes(scaffolded: Config) -> AsyncIterator[Supervisor]:
    """The scaffolded project with a second POST route, running."""
    (Path(scaffolded.project_dir) / "steps" / "refund_step.py").write_text(REFUND_STEP)
    sup = Supervisor(scaffolded)
    await sup.start()
    try:
        yield sup
    finally:
        await sup.stop()


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_send_form_offers_each_post_route_with_its_own_example(two_routes: Supervisor, redis_url: str) -> None:
    """Given a project serving POST /orders and POST /refunds, when /refunds is picked in the form, then its example body is filled in and the post is accepted."""
    from textual.widgets import Select

    base = f"http://127.0.0.1:{two_routes.port}"
    app = console(redis_url=redis_url, server_url=base)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await until(pilot, lambda: len(app.snap.steps) == 3, "the registry")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SendScreen), "the send form")
        form = app.screen
        route = form.query_one("#send-route", Select)
        text = form.query_one("#send-text", Input)
        assert route.value == "/orders" and json.loads(text.value) == {"sku": "example", "qty": 1}
        route.value = "/refunds"
        await until(pilot, lambda: text.value.startswith('{"order_sku"'), "the refund's example body")
        assert json.loads(text.value) == {"order_sku": "example", "amount": 1}
        assert f"POST {base}/refunds" in plain(form.query_one("#send-title", Label).content)
        await pilot.press("enter")
        await until(pilot, lambda: f"1 message sent to {base}/refunds (201)" in notes(app), "the refund accepted")


@pytest.mark.anyio
async def test_a_project_without_http_steps_is_told_to_send_onto_a_topic(redis_url: str) -> None:
    """Given a registry with a queue step only, when the console opens and s is pressed, then the hint and a toast point to `send --topic`, and no form opens."""
    import redis

    from iii_console.core.keys import Keys

    client = redis.Redis.from_url(redis_url)
    step = Step(name="Pack", triggers=[queue("shipments.made", input=Item)])
    client.hset(Keys().steps_registry, "Pack", json.dumps(step.describe()))
    client.close()
    app = console(redis_url=redis_url, server_url="http://127.0.0.1:9")
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        problems = app.query_one("#problems", RichLog)
        await until(pilot, lambda: "--topic shipments.made" in log_text(problems), "the hint naming the topic")
        assert "curl" not in log_text(problems)
        await pilot.press("s")
        await until(pilot, lambda: "no step taking a JSON POST" in notes(app), "why there is no form")
        assert not isinstance(app.screen, SendScreen)
