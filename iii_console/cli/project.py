"""``iii-console steps`` and ``config check``: the project's files, read without Redis."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from iii_console.cli.common import common_options, load_project
from iii_console.cli.output import cell, table_console
from iii_console.core.text import printable


@click.command("steps")
@click.option("--json", "as_json", is_flag=True)
@common_options
def steps_cmd(as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """List every step with its triggers, what it enqueues and its flows (reads files; Redis is not needed)."""
    from iii_console.core.discovery import discover

    cfg = load_project(config_path, redis_url)
    found = discover(cfg.steps_path, cfg.project_dir)
    motia = {"motia": found.motia} if found.motia_steps else {}
    if as_json:
        click.echo(json.dumps({"steps": [s.describe() for s in found.steps], "errors": [str(e) for e in found.errors], **motia}))
    else:
        if motia:
            click.echo(f"{len(found.motia_steps)} Motia step files run on {found.motia}", err=True)
        table = Table("step", "triggers", "enqueues", "flows", box=None, header_style="bold")
        for s in found.steps:
            table.add_row(
                *map(
                    cell,
                    (
                        s.name,
                        ", ".join(t.describe() for t in s.triggers),
                        ", ".join(s.enqueues) or "-",
                        ", ".join(s.flows) or "-",
                    ),
                )
            )
        table_console().print(table)
        for e in found.errors:
            click.echo(f"error: {printable(e)}", err=True)
    if found.errors:
        sys.exit(2)


@click.group("config")
def config_cmd() -> None:
    """Configuration tools."""


def _group_calls(steps: list[Any]) -> list[str]:
    """A warning for each step whose file calls ``enqueue_group`` (fan-in groups need ``broker: redis``)."""
    import re

    out = []
    for s in steps:
        try:
            text = Path(s.file).read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            continue
        m = re.search(r"\benqueue_group\s*\(", text)
        if m:
            line = text.count("\n", 0, m.start()) + 1
            out.append(
                f"warning: {s.file}:{line}, step {s.name!r}: calls enqueue_group, and fan-in groups need "
                "broker: redis (on rabbitmq the call raises)"
            )
    return out


@config_cmd.command("check")
@common_options
def config_check(config_path: str | None, redis_url: str | None) -> None:
    """Validate iii-config.yaml and every step file; print each problem with file, line and field.

    Reads files only (a --redis URL is checked for form, not reached).
    """
    from iii_console.adapters.queue.names import CRON_TOPIC, STATE_TOPIC
    from iii_console.core.discovery import discover
    from iii_console.core.errors import ConfigError
    from iii_console.core.steps import CronTrigger, StateTrigger

    try:
        cfg = load_project(config_path, redis_url)
    except ConfigError as exc:
        if config_path is not None and not os.path.exists(config_path):
            raise  # nothing to check: a usage error, not a finding
        every = [exc, *exc.more]
        for problem in every:
            click.echo(printable(problem))  # a problem the check found: the report, like every other
        n = len(every)
        click.echo(f"{n} problem{'s' if n != 1 else ''} in the configuration; steps not checked", err=True)
        sys.exit(2)
    found = discover(cfg.steps_path, cfg.project_dir)
    problems = [str(e) for e in found.errors]
    subscribed = {t for s in found.steps for t in s.topics}
    # `enqueues` declares what a step may send (as in Motia): a topic nobody subscribes to
    # yet is worth a warning, not a failed check; messages sent to it are dropped with a `log` event.
    warnings = [
        f"warning: {s.file}, step {s.name!r}, field 'enqueues': no step subscribes to topic {t!r}"
        for s in found.steps
        for t in s.enqueues
        if t not in subscribed
    ]
    if cfg.broker == "rabbitmq":  # fan-in groups are refused at run time there: say so now (a look at the source)
        warnings += _group_calls(found.steps)
    # A cron or state step's own queue (`_cron.STEP`, `_state.STEP`) is configured like a topic's.
    queues = (
        subscribed
        | {f"{CRON_TOPIC}.{s.name}" for s in found.steps if s.of(CronTrigger)}
        | {f"{STATE_TOPIC}.{s.name}" for s in found.steps if s.of(StateTrigger)}
    )
    for topic in cfg.queues:
        if topic != "default" and topic not in queues:
            problems.append(f"{cfg.source or 'iii-config.yaml'}: queues.{topic}: no step subscribes to this topic")
    for p in problems + warnings:
        click.echo(printable(p))
    if found.motia_steps:
        click.echo(f"{len(found.motia_steps)} Motia step files run on {found.motia}", err=True)
    tail = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""
    click.echo(f"{len(found.steps)} steps, {len(problems)} problem{'s' if len(problems) != 1 else ''}{tail}", err=True)
    if problems:
        sys.exit(2)
