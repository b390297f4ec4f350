"""``iii-console send``: test messages, posted to the running server or enqueued straight onto a topic."""

from __future__ import annotations

import json
import os
import shlex
import sys
import uuid
from typing import Any

import click

from iii_console.cli.common import (
    common_options,
    existing_redis,
    load_project,
    parse_json_arg,
)
from iii_console.core.config import Config
from iii_console.core.errors import IIIError
from iii_console.core.examples import MESSAGES_PATH
from iii_console.core.text import first_line


@click.command()
@click.argument("text", required=False)
@click.option("--topic", default=None, help="Enqueue straight to this topic instead of POSTing to the server.")
@click.option(
    "--data", default=None, metavar="JSON", help="Message data as JSON (with --topic), or the body to POST (with --path)."
)
@click.option(
    "--path", "route", default=None, metavar="/ROUTE", help="POST --data as JSON to this route of the server (e.g. /orders)."
)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None, help="Message priority.")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=1, show_default=True, help="How many to send.")
@click.option("--url", default=None, help="Server base URL (default: from server.host/port).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per message sent.")
@common_options
def send(
    text: str | None,
    topic: str | None,
    data: str | None,
    route: str | None,
    priority: str | None,
    count: int,
    url: str | None,
    as_json: bool,
    config_path: str | None,
    redis_url: str | None,
) -> None:
    """Inject test messages.

    \b
    iii-console send "hello" --priority high        POST to the running server's /messages
    iii-console send --path /orders --data '{"sku": "a1", "qty": 2}'   POST any JSON to any route
    iii-console send --topic message.sent --data '{"id": "m1", "text": "hi"}'   enqueue directly
    """
    if topic is not None and route is not None:
        raise click.UsageError("give either --path (POST to the server) or --topic (enqueue), not both")
    if topic is None and route is None and data is not None:
        raise click.UsageError("--data needs --topic or --path (or pass TEXT to post to the server's /messages)")
    if route is not None:
        if text:
            raise click.UsageError("with --path, give the body as --data JSON, not TEXT")
        if data is None:
            raise click.UsageError("--path needs --data, the JSON body to POST")
        if not route.startswith("/"):
            raise click.BadParameter(f"{route!r} must start with '/'", param_hint="--path")
    elif topic is None and not text:
        raise click.UsageError("give TEXT to post, --path with --data, or --topic with --data")
    if topic is not None and text:
        raise click.UsageError("give either TEXT or --topic/--data, not both")
    cfg = load_project(config_path, redis_url)
    if topic:
        sent = _send_topic(cfg, topic, data, priority, count, as_json)
    elif route is not None:
        body = parse_json_arg(data or "", "--data")
        sent = _send_http(cfg, url, body, route, count, as_json)
    else:
        message: dict[str, Any] = {"text": text or ""}
        if priority:
            message["priority"] = priority
        sent = _send_http(cfg, url, message, MESSAGES_PATH, count, as_json)
    if not as_json:
        click.echo(f"sent {sent} message{'s' if sent != 1 else ''}", err=True)


def _progress(count: int, as_json: bool) -> Any:
    from rich.progress import Progress

    return Progress(
        disable=count < 2 or as_json or not sys.stderr.isatty(),
        transient=True,
        console=__import__("rich.console").console.Console(stderr=True),
    )


def _send_http(cfg: Config, url: str | None, body: Any, path: str, count: int, as_json: bool) -> int:
    from iii_console.core.send import SendFailed, post_messages

    if url is None and cfg.server.port == 0:
        raise click.UsageError(
            "server.port is 0 (any free port), so the server's address is not known here: "
            "pass --url with the address the running server printed"
        )
    base = (url or f"http://{cfg.server.host}:{cfg.server.port}").rstrip("/")
    token = cfg.server.auth_token or os.environ.get("III_AUTH_TOKEN", "")
    with _progress(count, as_json) as progress:
        task = progress.add_task("sending", total=count)

        def answered(resp: Any) -> None:
            try:
                answer = resp.json()
            except ValueError:
                answer = resp.text
            if as_json:
                click.echo(json.dumps(answer))
            else:
                # The id the server gave, one line per message (``ID=$(iii-console send hi)`` works).
                click.echo(
                    answer["id"]
                    if isinstance(answer, dict) and isinstance(answer.get("id"), str)
                    else json.dumps(answer, separators=(",", ":"))
                )
            progress.advance(task)

        try:
            post_messages(base, body, count, token=token, path=path, on_answer=answered)
        except SendFailed as exc:
            if exc.unreachable:
                raise IIIError(f"no iii-console server at {base}: is `iii-console` running? (or pass --url)") from None
            if exc.status in (404, 405) and exc.sent == 0:
                raise IIIError(_no_route(cfg, base, path)) from None
            raise
    return count


def _no_route(cfg: Config, base: str, path: str) -> str:
    """Why a post found no route, in one line: the routes the project's steps serve, and what to run instead."""
    from iii_console.core.discovery import discover
    from iii_console.core.examples import all_routes, post_routes, topic_targets

    why = f"the server at {base} has no POST {path}"
    if path == MESSAGES_PATH:
        why += ' (`iii-console send TEXT` posts {"text": TEXT} there, as the seed project does)'
    try:
        steps = {s.name: s.describe() for s in discover(cfg.steps_path, cfg.project_dir).steps}
    except Exception as exc:  # the steps may not load here; the rest still says what to try
        why += f"; its routes could not be listed (the steps in {cfg.steps_path} did not load: {first_line(str(exc))})"
        steps = {}
    served = all_routes(steps)
    if served:
        why += "; it serves " + ", ".join(served)
    routes, topics = post_routes(steps), topic_targets(steps)
    route = f"--path {routes[0].path} --data {shlex.quote(routes[0].example_json)}" if routes else "--path /ROUTE --data '{...}'"
    topic = (
        f"--topic {topics[0].topic} --data {shlex.quote(topics[0].example_json)}" if topics else "--topic TOPIC --data '{...}'"
    )
    return f"{why}. POST JSON to a route: iii-console send {route}; or enqueue onto a topic: iii-console send {topic}"


def _send_topic(cfg: Config, topic: str, data: str | None, priority: str | None, count: int, as_json: bool) -> int:
    from iii_console.adapters.queue.names import CRON_TOPIC, STATE_TOPIC
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.core.services import Services
    from iii_console.runtime.runner import StepRunner

    if topic.startswith((f"{CRON_TOPIC}.", f"{STATE_TOPIC}.")):
        # The internal topics of cron and state steps: their handlers take a tick or a change, never free data.
        how = "iii-console cron run STEP" if topic.startswith(f"{CRON_TOPIC}.") else "iii-console state set GROUP KEY JSON"
        raise click.BadParameter(f"{topic!r} is a cron or state step's own topic; to run it, use `{how}`", param_hint="--topic")
    payload = parse_json_arg(data, "--data") if data is not None else {}
    url = existing_redis(cfg)
    cfg = cfg.with_overrides(**{"redis.url": url})
    steps = discover(cfg.steps_path, cfg.project_dir)
    subs = subscriptions_for(steps.steps)
    if topic not in subs:
        known = ", ".join(steps.topics) or "none"
        raise click.BadParameter(f"no step subscribes to {topic!r} (topics: {known})", param_hint="--topic")
    services = Services.open(cfg, "cli")
    sent = 0
    try:
        runner = StepRunner(services, subs)
        with _progress(count, as_json) as progress:
            task = progress.add_task("enqueueing", total=count)
            for _ in range(count):
                trace_id = uuid.uuid4().hex
                ids = runner.producer.enqueue(topic, payload, trace_id=trace_id, priority=priority, source="cli") or []
                sent += 1
                if as_json:
                    click.echo(json.dumps({"trace_id": trace_id, "message_ids": ids, "topic": topic}))
                else:
                    click.echo(" ".join(ids) or f"trace {trace_id}")
                progress.advance(task)
    finally:
        services.close()
    return sent
