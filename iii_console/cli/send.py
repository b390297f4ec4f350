"""``iii-console send``: test messages, posted to the running server or enqueued straight onto a topic."""

from __future__ import annotations

import json
import os
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


@click.command()
@click.argument("text", required=False)
@click.option("--topic", default=None, help="Enqueue straight to this topic instead of POSTing to the server.")
@click.option("--data", default=None, metavar="JSON", help="Message data as JSON (with --topic).")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None, help="Message priority.")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=1, show_default=True, help="How many to send.")
@click.option("--url", default=None, help="Server base URL (default: from server.host/port).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per message sent.")
@common_options
def send(
    text: str | None,
    topic: str | None,
    data: str | None,
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
    iii-console send --topic message.sent --data '{"id": "m1", "text": "hi"}'   enqueue directly
    """
    if topic is None and data is not None:
        raise click.UsageError("--data needs --topic (or pass TEXT to post to the server)")
    if topic is None and not text:
        raise click.UsageError("give TEXT to post, or --topic with --data")
    if topic is not None and text:
        raise click.UsageError("give either TEXT or --topic/--data, not both")
    cfg = load_project(config_path, redis_url)
    sent = (
        _send_topic(cfg, topic, data, priority, count, as_json)
        if topic
        else _send_http(cfg, url, text or "", priority, count, as_json)
    )
    if not as_json:
        click.echo(f"sent {sent} message{'s' if sent != 1 else ''}", err=True)


def _progress(count: int, as_json: bool) -> Any:
    from rich.progress import Progress

    return Progress(
        disable=count < 2 or as_json or not sys.stderr.isatty(),
        transient=True,
        console=__import__("rich.console").console.Console(stderr=True),
    )


def _send_http(cfg: Config, url: str | None, text: str, priority: str | None, count: int, as_json: bool) -> int:
    from iii_console.core.send import SendFailed, post_messages

    if url is None and cfg.server.port == 0:
        raise click.UsageError(
            "server.port is 0 (any free port), so the server's address is not known here: "
            "pass --url with the address the running server printed"
        )
    base = (url or f"http://{cfg.server.host}:{cfg.server.port}").rstrip("/")
    body: dict[str, Any] = {"text": text}
    if priority:
        body["priority"] = priority
    token = cfg.server.auth_token or os.environ.get("III_AUTH_TOKEN", "")
    with _progress(count, as_json) as progress:
        task = progress.add_task("sending", total=count)

        def answered(resp: Any) -> None:
            body = resp.json()
            if as_json:
                click.echo(json.dumps(body))
            else:
                # The id the server gave, one line per message (``ID=$(iii-console send hi)`` works).
                click.echo(
                    body["id"]
                    if isinstance(body, dict) and isinstance(body.get("id"), str)
                    else json.dumps(body, separators=(",", ":"))
                )
            progress.advance(task)

        try:
            post_messages(base, body, count, token=token, on_answer=answered)
        except SendFailed as exc:
            if exc.unreachable:
                raise IIIError(f"no iii-console server at {base}: is `iii-console` running? (or pass --url)") from None
            raise
    return count


def _send_topic(cfg: Config, topic: str, data: str | None, priority: str | None, count: int, as_json: bool) -> int:
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.core.services import Services
    from iii_console.runtime.runner import StepRunner

    payload = parse_json_arg(data, "--data") if data is not None else {}
    url = existing_redis(cfg)
    cfg = cfg.with_overrides(**{"redis.url": url})
    steps = discover(cfg.steps_path)
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
