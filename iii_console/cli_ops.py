"""Operator commands: dead letters, state, steps, config check.

Kept apart from ``cli.py`` (run/send/tail) so each file reads as one job; both
register on the same click group.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from iii_console.cli import _common, _existing_redis, _load, cli
from iii_console.core.dlq import DeadLetter, DeadLetterFilter, DeadLetterStore, parse_since, purge, select
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys
from iii_console.core.text import printable
from iii_console.format import clock, short


def _out() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _cell(value: Any) -> Text:
    """A table cell from stored text: never read as Rich markup, control characters escaped."""
    return Text(printable(value))


def _client(config_path: str | None, redis_url: str | None) -> tuple[Any, Any, Keys]:
    from iii_console.runtime.services import redis_client

    cfg = _load(config_path, redis_url)
    url = _existing_redis(cfg)
    cfg = cfg.with_overrides(**{"redis.url": url})
    return cfg, redis_client(url), Keys(cfg.redis.prefix)


def _dlq_filters(fn: Any) -> Any:
    fn = click.option("--since", default=None, metavar="T", help="Only entries that last failed within T (30s, 10m, 2h, 7d) or since an ISO time.")(fn)
    fn = click.option("--error", "error_text", default=None, metavar="TEXT", help="Only entries whose error contains TEXT.")(fn)
    fn = click.option("--step", default=None, help="Only entries of this step.")(fn)
    fn = click.option("--queue", default=None, metavar="Q", help="Only this dead-letter queue (or topic).")(fn)
    return fn


def _filter(queue: str | None, step: str | None, error_text: str | None, since: str | None) -> DeadLetterFilter:
    try:
        since_ms = parse_since(since, now_ms()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    return DeadLetterFilter(queue=queue, step=step, error=error_text, since_ms=since_ms)


def _entry_json(e: DeadLetter, *, full: bool = False) -> dict[str, Any]:
    d = {"id": e.id, "dlq": e.dlq, "topic": e.topic, "step": e.step, "error": e.error, "attempts": e.attempts,
         "first_failure_ms": e.first_failure_ms, "last_failure_ms": e.last_failure_ms, "trace_id": e.trace_id, "priority": e.priority}
    if full:
        d.update(data=e.data, traceback=e.traceback, raw=e.raw, message_id=e.message_id, queue=e.queue)
    return d


def _confirm(action: str, n: int, yes: bool) -> bool:
    if n == 0:
        click.echo(f"nothing to {action}", err=True)
        return False
    if yes:
        return True
    if not sys.stdin.isatty():
        raise click.UsageError(f"{action} would touch {n} entries; pass --yes to confirm when not on a terminal")
    return click.confirm(f"{action} {n} dead letter{'s' if n != 1 else ''}?", default=False, err=True)


@cli.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@_dlq_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@_common
def dlq_list(queue: str | None, step: str | None, error_text: str | None, since: str | None, as_json: bool,
             config_path: str | None, redis_url: str | None) -> None:
    """List dead letters, newest first."""
    flt = _filter(queue, step, error_text, since)
    _cfg, client, keys = _client(config_path, redis_url)
    entries = select(DeadLetterStore(client, keys), flt)
    if as_json:
        for e in entries:
            click.echo(json.dumps(_entry_json(e)))
        return
    table = Table("id", "dlq", "step", "attempts", "last failure", "error", box=None, header_style="bold")
    for e in entries:
        table.add_row(*map(_cell, (e.id[:36], e.dlq, e.step or "-", str(e.attempts), clock(e.last_failure_ms), short(e.error, 70))))
    _out().print(table)
    click.echo(f"{len(entries)} dead letter{'s' if len(entries) != 1 else ''}", err=True)


@dlq.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True)
@_common
def dlq_show(entry_id: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Show one dead letter: payload, error, traceback, attempts, failures, trace id."""
    _cfg, client, keys = _client(config_path, redis_url)
    e = DeadLetterStore(client, keys).get(entry_id)
    if e is None:
        raise click.BadParameter(f"no dead letter {entry_id!r}", param_hint="ENTRY_ID")
    if as_json:
        click.echo(json.dumps(_entry_json(e, full=True), default=str))
        return
    con = _out()
    for label, value in (("id", e.id), ("dead-letter queue", e.dlq), ("topic / step", f"{e.topic} / {e.step}"),
                         ("attempts", e.attempts), ("first failure", clock(e.first_failure_ms)),
                         ("last failure", clock(e.last_failure_ms)), ("trace id", e.trace_id), ("error", e.error)):
        con.print(Text.assemble((f"{label:>18}", "bold"), " ", printable(value)), highlight=False)
    con.print("[bold]           payload[/]", markup=True)
    con.print(Text(printable(json.dumps(e.data, indent=2, default=str) if e.raw is None else e.raw, keep_lines=True)))
    if e.traceback:
        con.print("[bold]         traceback[/]", markup=True)
        con.print(Text(printable(e.traceback.rstrip(), keep_lines=True)))


@dlq.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every entry matching the filters.")
@_dlq_filters
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
@_common
def dlq_replay(entry_ids: tuple[str, ...], replay_all: bool, queue: str | None, step: str | None, error_text: str | None,
               since: str | None, dry_run: bool, yes: bool, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Put dead letters back on their queues with attempts reset (ENTRY_ID... or --all with filters)."""
    from iii_console.core.replay import ReplayError
    from iii_console.runtime.brokers import make_replayer
    from iii_console.runtime.services import Services

    if bool(entry_ids) == replay_all:
        raise click.UsageError("give ENTRY_ID... or --all (with optional filters), not both and not neither")
    flt = _filter(queue, step, error_text, since)
    cfg, client, keys = _client(config_path, redis_url)
    entries = _targets(DeadLetterStore(client, keys), entry_ids, flt)
    if dry_run:
        for e in entries:
            click.echo(json.dumps(_entry_json(e)) if as_json else printable(f"would replay {e.id} ({e.dlq}, {e.step}): {short(e.error, 60)}"))
        click.echo(f"{len(entries)} would be replayed", err=True)
        return
    if not _confirm("replay", len(entries), yes):
        return
    services = Services.open(cfg, "cli")
    done = 0
    try:
        replayer = make_replayer(services)
        for e in entries:
            try:
                new_id = replayer.replay(e)
            except ReplayError as exc:
                click.echo(f"skipped: {printable(exc)}", err=True)
                continue
            done += 1
            if as_json:
                click.echo(json.dumps({"replayed": e.id, "message_id": new_id, "queue": e.queue}))
    finally:
        services.close()
    click.echo(f"replayed {done} of {len(entries)}", err=True)
    if done < len(entries):
        sys.exit(1)


@dlq.command("purge")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "purge_all", is_flag=True, help="Purge every entry matching the filters.")
@_dlq_filters
@click.option("--dry-run", is_flag=True, help="Show what would be purged; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_common
def dlq_purge(entry_ids: tuple[str, ...], purge_all: bool, queue: str | None, step: str | None, error_text: str | None,
              since: str | None, dry_run: bool, yes: bool, config_path: str | None, redis_url: str | None) -> None:
    """Delete dead letters for good (ENTRY_ID... or --all with filters)."""
    if bool(entry_ids) == purge_all:
        raise click.UsageError("give ENTRY_ID... or --all (with optional filters), not both and not neither")
    flt = _filter(queue, step, error_text, since)
    _cfg, client, keys = _client(config_path, redis_url)
    store = DeadLetterStore(client, keys)
    entries = _targets(store, entry_ids, flt)
    if dry_run:
        for e in entries:
            click.echo(printable(f"would purge {e.id} ({e.dlq}, {e.step}): {short(e.error, 60)}"))
        click.echo(f"{len(entries)} would be purged", err=True)
        return
    if not _confirm("purge", len(entries), yes):
        return
    click.echo(f"purged {purge(store, entries)}", err=True)


def _targets(store: DeadLetterStore, ids: tuple[str, ...], flt: DeadLetterFilter) -> list[DeadLetter]:
    if not ids:
        return select(store, flt)
    out = []
    for i in ids:
        e = store.get(i)
        if e is None:
            raise click.BadParameter(f"no dead letter {i!r}", param_hint="ENTRY_ID")
        out.append(e)
    return out


# -- state --------------------------------------------------------------------

@cli.group("state")
def state_cmd() -> None:
    """Look at and correct state. Edits fire state triggers like any other change."""


def _store(config_path: str | None, redis_url: str | None) -> Any:
    from iii_console.core.state import StateStore

    cfg, client, keys = _client(config_path, redis_url)
    # Each command is its own trace, so the steps its change triggers are followed like any other.
    return StateStore(client, keys, trace_id=uuid.uuid4().hex, step="cli", events_maxlen=cfg.events.maxlen)


def _dump(value: Any, as_json: bool) -> None:
    click.echo(json.dumps(value) if as_json else printable(json.dumps(value, indent=2, ensure_ascii=False), keep_lines=True))


@state_cmd.command("groups")
@click.option("--json", "as_json", is_flag=True)
@_common
def state_groups(as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """List state groups."""
    groups = _store(config_path, redis_url).groups()
    click.echo(json.dumps(groups)) if as_json else [click.echo(printable(g)) for g in groups]


@state_cmd.command("list")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True)
@_common
def state_list(group: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Every key and value of GROUP."""
    values = _store(config_path, redis_url).list(group)
    if as_json:
        click.echo(json.dumps(values))
        return
    for k, v in values.items():
        click.echo(f"{printable(k)}\t{printable(short(v, 120))}")
    click.echo(f"{len(values)} keys", err=True)


@state_cmd.command("get")
@click.argument("group")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@_common
def state_get(group: str, key: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """The value of GROUP/KEY."""
    value = _store(config_path, redis_url).get(group, key)
    if value is None:
        raise click.BadParameter(f"no key {key!r} in group {group!r}", param_hint="KEY")
    _dump(value, as_json)


@state_cmd.command("set")
@click.argument("group")
@click.argument("key")
@click.argument("value", metavar="JSON")
@_common
def state_set(group: str, key: str, value: str, config_path: str | None, redis_url: str | None) -> None:
    """Set GROUP/KEY to a JSON value."""
    from iii_console.cli import parse_json_arg

    parsed = parse_json_arg(value, "JSON")
    if parsed is None:
        raise click.BadParameter("null is not a value; use `state delete`", param_hint="JSON")
    _store(config_path, redis_url).set(group, key, parsed)
    click.echo(printable(f"set {group}/{key}"), err=True)


@state_cmd.command("delete")
@click.argument("group")
@click.argument("key")
@_common
def state_delete(group: str, key: str, config_path: str | None, redis_url: str | None) -> None:
    """Delete GROUP/KEY."""
    old = _store(config_path, redis_url).delete(group, key)
    if old is None:
        raise click.BadParameter(f"no key {key!r} in group {group!r}", param_hint="KEY")
    click.echo(printable(f"deleted {group}/{key}"), err=True)


# -- steps and config -------------------------------------------------------

@cli.command("steps")
@click.option("--json", "as_json", is_flag=True)
@_common
def steps_cmd(as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """List every step with its triggers, what it enqueues and its flows (reads files; Redis is not needed)."""
    from iii_console.core.discovery import discover

    cfg = _load(config_path, redis_url)
    found = discover(cfg.steps_path)
    motia = {"motia": found.motia} if found.motia_steps else {}
    if as_json:
        click.echo(json.dumps({"steps": [s.describe() for s in found.steps], "errors": [str(e) for e in found.errors], **motia}))
    else:
        if motia:
            click.echo(f"{len(found.motia_steps)} Motia step files run on {found.motia}", err=True)
        table = Table("step", "triggers", "enqueues", "flows", box=None, header_style="bold")
        for s in found.steps:
            table.add_row(*map(_cell, (s.name, ", ".join(t.describe() for t in s.triggers), ", ".join(s.enqueues) or "-", ", ".join(s.flows) or "-")))
        _out().print(table)
        for e in found.errors:
            click.echo(f"error: {printable(e)}", err=True)
    if found.errors:
        sys.exit(2)


@cli.group("config")
def config_cmd() -> None:
    """Configuration tools."""


@config_cmd.command("check")
@_common
def config_check(config_path: str | None, redis_url: str | None) -> None:
    """Validate iii-config.yaml and every step file; print each problem with file, line and field.

    Reads files only (a --redis URL is checked for form, not reached).
    """
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.core.errors import ConfigError

    try:
        cfg = _load(config_path, redis_url)
    except ConfigError as exc:
        if config_path is not None and not os.path.exists(config_path):
            raise  # nothing to check: a usage error, not a finding
        click.echo(printable(exc))  # a problem the check found: the report, like every other
        click.echo("1 problem in the configuration; steps not checked", err=True)
        sys.exit(2)
    found = discover(cfg.steps_path)
    problems = [str(e) for e in found.errors]
    subscribed = {t for s in found.steps for t in s.topics}
    # `enqueues` declares what a step may send (as in Motia): a topic nobody subscribes to
    # yet is worth a warning, not a failed check; messages sent to it are dropped with a `log` event.
    warnings = [f"warning: {s.file}, step {s.name!r}, field 'enqueues': no step subscribes to topic {t!r}"
                for s in found.steps for t in s.enqueues if t not in subscribed]
    # A cron or state step's own queue (`_cron.STEP`, `_state.STEP`) is configured like a topic's.
    queues = set(subscriptions_for(found.steps))
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
import iii_console.cli_cron  # noqa: E402,F401  (registers `cron run`)
import iii_console.cli_new  # noqa: E402,F401  (registers `new`)
import iii_console.cli_web  # noqa: E402,F401  (registers `web`)
