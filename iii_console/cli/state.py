"""``iii-console state``: look at and correct state from the command line."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click

from iii_console.cli.common import common_options, open_client, parse_json_arg
from iii_console.core.text import printable
from iii_console.format import short


@click.group("state")
def state_cmd() -> None:
    """Look at and correct state. Edits fire state triggers like any other change."""


def _name(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A group or key name as the store takes it: non-empty Unicode text (a usage error, exit 2, otherwise)."""
    what = (param.name or "name").upper()
    if not value:
        raise click.BadParameter("must not be empty", param_hint=what)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise click.BadParameter("must be valid Unicode text (no lone surrogates)", param_hint=what) from None
    return value


def _store(config_path: str | None, redis_url: str | None) -> Any:
    from iii_console.core.state import StateStore

    cfg, client, keys = open_client(config_path, redis_url)
    # Each command is its own trace, so the steps its change triggers are followed like any other.
    return StateStore(client, keys, trace_id=uuid.uuid4().hex, step="cli", events_maxlen=cfg.events.maxlen)


def _dump(value: Any, as_json: bool) -> None:
    click.echo(json.dumps(value) if as_json else printable(json.dumps(value, indent=2, ensure_ascii=False), keep_lines=True))


@state_cmd.command("groups")
@click.option("--json", "as_json", is_flag=True)
@common_options
def state_groups(as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """List state groups."""
    groups = _store(config_path, redis_url).groups()
    if as_json:
        click.echo(json.dumps(groups))
        return
    for g in groups:
        click.echo(printable(g))


@state_cmd.command("list")
@click.argument("group", callback=_name)
@click.option("--json", "as_json", is_flag=True)
@common_options
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
@click.argument("group", callback=_name)
@click.argument("key", callback=_name)
@click.option("--json", "as_json", is_flag=True)
@common_options
def state_get(group: str, key: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """The value of GROUP/KEY."""
    value = _store(config_path, redis_url).get(group, key)
    if value is None:
        raise click.BadParameter(f"no key {key!r} in group {group!r}", param_hint="KEY")
    _dump(value, as_json)


@state_cmd.command("set")
@click.argument("group", callback=_name)
@click.argument("key", callback=_name)
@click.argument("value", metavar="JSON")
@common_options
def state_set(group: str, key: str, value: str, config_path: str | None, redis_url: str | None) -> None:
    """Set GROUP/KEY to a JSON value."""
    parsed = parse_json_arg(value, "JSON")
    if parsed is None:
        raise click.BadParameter("null is not a value; use `state delete`", param_hint="JSON")
    _store(config_path, redis_url).set(group, key, parsed)
    click.echo(printable(f"set {group}/{key}"), err=True)


@state_cmd.command("delete")
@click.argument("group", callback=_name)
@click.argument("key", callback=_name)
@common_options
def state_delete(group: str, key: str, config_path: str | None, redis_url: str | None) -> None:
    """Delete GROUP/KEY."""
    old = _store(config_path, redis_url).delete(group, key)
    if old is None:
        raise click.BadParameter(f"no key {key!r} in group {group!r}", param_hint="KEY")
    click.echo(printable(f"deleted {group}/{key}"), err=True)
