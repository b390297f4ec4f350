"""``iii-console cron run STEP``: fire a cron step now."""

from __future__ import annotations

import json
from typing import Any

import click

from iii_console.cli import _common, _existing_redis, _load, cli


@cli.group("cron")
def cron_cmd() -> None:
    """Cron steps."""


@cron_cmd.command("run")
@click.argument("step_name", metavar="STEP")
@click.option("--json", "as_json", is_flag=True, help="Print the trace and message ids as JSON.")
@_common
def cron_run(step_name: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Fire cron step STEP now, outside its schedule (marked manual in its events and ctx.trigger)."""
    from iii_console.core.cronrun import run_now
    from iii_console.core.discovery import discover
    from iii_console.core.steps import CronTrigger
    from iii_console.runtime.services import Services

    cfg = _load(config_path, redis_url)
    steps = discover(cfg.steps_path)
    crons = sorted(s.name for s in steps.steps if s.cron_like())
    step = next((s for s in steps.steps if s.name == step_name and s.cron_like()), None)
    if step is None:
        raise click.BadParameter(f"no cron step named {step_name!r} (cron steps: {', '.join(crons) or 'none'})",
                                 param_hint="STEP")
    cfg = cfg.with_overrides(**{"redis.url": _existing_redis(cfg)})
    services = Services.open(cfg, "cli")
    try:
        topic = f"_cron.{step.name}"
        if cfg.broker == "rabbitmq":
            trace_id, ids = _run_now_on_broker(services, steps, step.name, step.of(CronTrigger)[0].expression, topic)
        else:
            trace_id, mid = run_now(services.client, services.keys, services.emitter, step.name, step.of(CronTrigger)[0].expression,
                                    priority=cfg.queue(topic).priority)
            ids = [mid]
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps({"step": step.name, "trace_id": trace_id, "message_ids": ids}))
    else:
        click.echo(f"fired {step.name} now (trace {trace_id})")


def _run_now_on_broker(services: Any, steps: Any, step: str, expression: str, topic: str) -> tuple[str, list[str]]:
    """A manual tick through the configured broker's producer (``broker: rabbitmq``), with its ``cron.fired``."""
    import uuid

    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.events import now_ms
    from iii_console.runtime.brokers import make_producer

    now, trace_id = now_ms(), uuid.uuid4().hex
    data = {"scheduled_ms": now, "fired_ms": now, "expression": expression, "manual": True}
    fired = lambda ids: [services.emitter.make(  # noqa: E731
        "cron.fired", trace_id=trace_id, message_id=ids[0] if ids else None, step=step, topic=topic,
        data={"expression": expression, "scheduled_ms": now, "fired_ms": now, "drift_ms": 0, "manual": True})]
    ids = make_producer(services, subscriptions_for(steps.steps)).enqueue(topic, data, trace_id=trace_id, source="cli", announce=fired)
    return trace_id, list(ids or [])
