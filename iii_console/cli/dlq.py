"""``iii-console dlq``: inspect, replay and purge dead letters."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from iii_console.adapters.queue.names import CRON_TOPIC, STATE_TOPIC
from iii_console.cli.common import common_options, open_client
from iii_console.cli.output import cell, table_console
from iii_console.core.dlq import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStore,
    parse_since,
    purge,
    select,
)
from iii_console.core.events import now_ms
from iii_console.core.keys import as_str
from iii_console.core.text import first_line, printable
from iii_console.format import clock, short


def _dlq_filters(fn: Any) -> Any:
    fn = click.option(
        "--since",
        default=None,
        metavar="T",
        help="Only entries that last failed within T (30s, 10m, 2h, 7d) or since an ISO time.",
    )(fn)
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
    d = {
        "id": e.id,
        "dlq": e.dlq,
        "topic": e.topic,
        "step": e.step,
        "error": e.error,
        "attempts": e.attempts,
        "first_failure_ms": e.first_failure_ms,
        "last_failure_ms": e.last_failure_ms,
        "trace_id": e.trace_id,
        "priority": e.priority,
    }
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


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@_dlq_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@common_options
def dlq_list(
    queue: str | None,
    step: str | None,
    error_text: str | None,
    since: str | None,
    as_json: bool,
    config_path: str | None,
    redis_url: str | None,
) -> None:
    """List dead letters, newest first."""
    flt = _filter(queue, step, error_text, since)
    _cfg, client, keys = open_client(config_path, redis_url)
    entries = select(DeadLetterStore(client, keys), flt)
    if as_json:
        for e in entries:
            click.echo(json.dumps(_entry_json(e)))
        return
    # Ids are what `show`, `replay` and `purge` take: the other columns shrink, the ids never do.
    table = Table(box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=max((len(e.id) for e in entries), default=2))
    for name in ("dlq", "step", "attempts", "last failure", "error"):
        table.add_column(name)
    for e in entries:
        table.add_row(
            *map(cell, (e.id, e.dlq, e.step or "-", str(e.attempts), clock(e.last_failure_ms), short(first_line(e.error), 70)))
        )
    con = table_console()
    if not sys.stdout.isatty():
        con = Console(highlight=False, soft_wrap=False, width=max(con.width, 200))  # piped: no terminal to fit
    con.print(table)
    click.echo(f"{len(entries)} dead letter{'s' if len(entries) != 1 else ''}", err=True)


@dlq.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True)
@common_options
def dlq_show(entry_id: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Show one dead letter: payload, error, traceback, attempts, failures, trace id."""
    _cfg, client, keys = open_client(config_path, redis_url)
    e = _resolve(DeadLetterStore(client, keys), entry_id)
    if as_json:
        click.echo(json.dumps(_entry_json(e, full=True), default=str))
        return
    con = table_console()
    for label, value in (
        ("id", e.id),
        ("dead-letter queue", e.dlq),
        ("topic / step", f"{e.topic} / {e.step}"),
        ("attempts", e.attempts),
        ("first failure", clock(e.first_failure_ms)),
        ("last failure", clock(e.last_failure_ms)),
        ("trace id", e.trace_id),
        ("error", e.error),
    ):
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
@common_options
def dlq_replay(
    entry_ids: tuple[str, ...],
    replay_all: bool,
    queue: str | None,
    step: str | None,
    error_text: str | None,
    since: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    config_path: str | None,
    redis_url: str | None,
) -> None:
    """Put dead letters back on their queues with attempts reset (ENTRY_ID... or --all with filters)."""
    from iii_console.core.replay import ReplayError
    from iii_console.core.services import Services
    from iii_console.runtime.brokers import make_replayer

    if bool(entry_ids) == replay_all:
        raise click.UsageError("give ENTRY_ID... or --all (with optional filters), not both and not neither")
    flt = _filter(queue, step, error_text, since)
    cfg, client, keys = open_client(config_path, redis_url)
    entries = _targets(DeadLetterStore(client, keys), entry_ids, flt)
    running = _running_steps(client, keys)
    unrun = {e.id: why for e in entries if (why := _unrun(e, running))}
    if dry_run:
        for e in entries:
            if e.id in unrun:
                click.echo(f"would skip {e.id}: {printable(unrun[e.id])}", err=True)
                continue
            click.echo(
                json.dumps(_entry_json(e))
                if as_json
                else printable(f"would replay {e.id} ({e.dlq}, {e.step}): {short(e.error, 60)}")
            )
        click.echo(f"{len(entries) - len(unrun)} would be replayed", err=True)
        return
    if not _confirm("replay", len(entries), yes):
        return
    services = Services.open(cfg, "cli")
    done = 0
    try:
        replayer = make_replayer(services)
        for e in entries:
            if e.id in unrun:
                click.echo(f"skipped {e.id}: {printable(unrun[e.id])}; it stays in {printable(e.dlq)}", err=True)
                continue
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


def _running_steps(client: Any, keys: Any) -> dict[str, dict[str, Any]] | None:
    """The steps the project's running (or last) deployment published (``None``: none ever did, nothing to check)."""
    raw = client.hgetall(keys.steps_registry)
    if not raw:
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            desc = json.loads(value)
        except ValueError:
            desc = {}
        out[as_str(name)] = desc if isinstance(desc, dict) else {}
    return out


def _unrun(entry: Any, running: dict[str, dict[str, Any]] | None) -> str | None:
    """Why nothing of the deployment would run ``entry`` once replayed onto its queue (a step renamed or removed,
    or no longer subscribed to the topic), or ``None``."""
    if running is None or not entry.step:
        return None
    step = running.get(entry.step)
    if step is None:
        return f"step {entry.step!r} is not among the deployment's steps (renamed or removed?): nothing would run it"
    topic = entry.topic or ""
    specs = [t for t in step.get("trigger_specs") or [] if isinstance(t, dict)]
    kind = "cron" if topic.startswith(f"{CRON_TOPIC}.") else "state" if topic.startswith(f"{STATE_TOPIC}.") else None
    subscribed = (
        any(t.get("type") == kind for t in specs)
        if kind
        else any(t.get("type") == "queue" and t.get("topic") == topic for t in specs)
    )
    if not subscribed:
        return f"step {entry.step!r} no longer takes topic {topic!r}: nothing would run it"
    return None


@dlq.command("purge")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "purge_all", is_flag=True, help="Purge every entry matching the filters.")
@_dlq_filters
@click.option("--dry-run", is_flag=True, help="Show what would be purged; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@common_options
def dlq_purge(
    entry_ids: tuple[str, ...],
    purge_all: bool,
    queue: str | None,
    step: str | None,
    error_text: str | None,
    since: str | None,
    dry_run: bool,
    yes: bool,
    config_path: str | None,
    redis_url: str | None,
) -> None:
    """Delete dead letters for good (ENTRY_ID... or --all with filters)."""
    if bool(entry_ids) == purge_all:
        raise click.UsageError("give ENTRY_ID... or --all (with optional filters), not both and not neither")
    flt = _filter(queue, step, error_text, since)
    _cfg, client, keys = open_client(config_path, redis_url)
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
    return [_resolve(store, i) for i in ids]


def _resolve(store: DeadLetterStore, entry_id: str) -> DeadLetter:
    """The entry ``entry_id`` names: its whole id, or any prefix of it that no other id shares."""
    e = store.get(entry_id)
    if e is not None:
        return e
    prefix = entry_id.rstrip("…").rstrip(".")  # copied from a cut listing: ``04f9308c-92…``
    found = store.matching(prefix) if prefix else []
    if len(found) > 1:
        shown = "\n  ".join(found[:10]) + ("\n  …" if len(found) > 10 else "")
        raise click.BadParameter(
            f"{entry_id!r} is ambiguous; it starts {len(found)}{'+' if len(found) >= 20 else ''} dead letters:\n  {shown}",
            param_hint="ENTRY_ID",
        )
    e = store.get(found[0]) if found else None
    if e is None:
        raise click.BadParameter(
            f"no dead letter {entry_id!r} (an id or a unique prefix of one; see `iii-console dlq list`)", param_hint="ENTRY_ID"
        )
    return e
