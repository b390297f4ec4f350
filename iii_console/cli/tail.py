"""``iii-console tail``: live events from the event stream, one line each."""

from __future__ import annotations

import time

import click

from iii_console.cli import output
from iii_console.cli.common import common_options, existing_redis, load_project
from iii_console.core.events import EVENT_TYPES, Event


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only these event types; a trailing dot matches a family (message.). Repeatable.",
)
@click.option("--trace", default=None, metavar="ID", help="Only events of this trace id (a prefix is enough).")
@click.option("--history", type=click.IntRange(0, 100_000), default=0, help="First print up to N past events.")
@common_options
def tail(
    as_json: bool, types: tuple[str, ...], trace: str | None, history: int, config_path: str | None, redis_url: str | None
) -> None:
    """Print live events from the event stream."""
    import redis as _redis

    for t in types:
        if t not in EVENT_TYPES and not (t.endswith(".") and any(e.startswith(t) for e in EVENT_TYPES)):
            raise click.BadParameter(f"unknown event type {t!r}; known: {', '.join(EVENT_TYPES)}", param_hint="--type")
    cfg = load_project(config_path, redis_url)
    url = existing_redis(cfg)
    from iii_console.core.connection import redis_client
    from iii_console.core.keys import Keys

    keys = Keys(cfg.redis.prefix)
    client = redis_client(url, socket_timeout=None)
    render = output.print_json if as_json else output.print_human

    def wanted(ev: Event) -> bool:
        if types and not any(ev.type == t or (t.endswith(".") and ev.type.startswith(t)) for t in types):
            return False
        return not trace or ev.trace_id.startswith(trace)

    last = "$"
    if history:
        past = list(reversed(client.xrevrange(keys.events, count=history)))
        for entry_id, fields in past:
            ev = Event.decode(entry_id, fields)
            if wanted(ev):
                render(ev)
        output.flush_stdout()
        if past:
            last = past[-1][0].decode()
    try:
        while True:
            try:
                got = client.xread({keys.events: last}, count=500, block=1000)
            except _redis.ConnectionError:
                click.echo("tail: lost Redis, reconnecting...", err=True)
                time.sleep(1)
                continue
            for _s, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    ev = Event.decode(entry_id, fields)
                    if wanted(ev):
                        render(ev)
            output.flush_stdout()
            if output.stdout_closed():
                return  # `tail | head -5` got its lines
    except KeyboardInterrupt:
        pass
