"""``iii-console cron run STEP``: fire a cron step now."""

from __future__ import annotations

import json

import click

from iii_console.cli.common import common_options, existing_redis, load_project


@click.group("cron")
def cron_cmd() -> None:
    """Cron steps."""


@cron_cmd.command("run")
@click.argument("step_name", metavar="STEP")
@click.option("--json", "as_json", is_flag=True, help="Print the trace and message ids as JSON.")
@common_options
def cron_run(step_name: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Fire cron step STEP now, outside its schedule (marked manual in its events and ctx.trigger)."""
    from iii_console.core.discovery import discover
    from iii_console.core.services import Services
    from iii_console.core.steps import CronTrigger
    from iii_console.runtime.brokers import fire_cron_now

    cfg = load_project(config_path, redis_url)
    steps = discover(cfg.steps_path, cfg.project_dir)
    crons = sorted(s.name for s in steps.steps if s.cron_like())
    step = next((s for s in steps.steps if s.name == step_name and s.cron_like()), None)
    if step is None:
        raise click.BadParameter(
            f"no cron step named {step_name!r} (cron steps: {', '.join(crons) or 'none'})", param_hint="STEP"
        )
    cfg = cfg.with_overrides(**{"redis.url": existing_redis(cfg)})
    services = Services.open(cfg, "cli")
    try:
        topic = f"_cron.{step.name}"
        trace_id, mid = fire_cron_now(
            services.client,
            services.keys,
            services.emitter,
            cfg,
            step.name,
            step.of(CronTrigger)[0].expression,
            priority=cfg.queue(topic).priority,
        )
        ids = [mid]
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps({"step": step.name, "trace_id": trace_id, "message_ids": ids}))
    else:
        click.echo(f"fired {step.name} now (trace {trace_id})")
