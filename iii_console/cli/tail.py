"""``iii-console tail``: live events from the event stream, one line each."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from iii_console.cli import output
from iii_console.cli.common import common_options, existing_redis, load_project
from iii_console.core.events import EVENT_TYPES, Event
from iii_console.core.keys import as_str

#: Entries one read takes at most.
BATCH = 500


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

    def render_wanted(ev: Event) -> None:
        if wanted(ev):
            render(ev)

    def lost(_exc: Exception) -> None:
        click.echo("tail: lost Redis, reconnecting...", err=True)

    try:
        every = as_json and not types and not trace
        follow(
            client, keys.events, last, render_wanted, on_lost=lost, render_entries=output.print_json_entries if every else None
        )
    except KeyboardInterrupt:
        pass


def follow(
    client: Any,
    stream: str,
    last: str,
    render: Callable[[Event], None],
    *,
    done: Callable[[], bool] = lambda: False,
    on_lost: Callable[[Exception], None] | None = None,
    block_ms: int = 1000,
    render_entries: Callable[[Any], None] | None = None,
    gather_s: float = 0.0,
) -> None:
    """Print the events of ``stream`` after ``last`` as they are written; the reader of ``tail`` and of the echo.

    stdout is flushed once per batch read (a write per event would cost a syscall
    each). Returns once our stdout's reader went away, or, after ``done()`` turned
    true, at the first read that finds nothing new: the stream read to its end.
    A lost Redis is retried (``on_lost`` told) until ``done()``. ``render_entries``, if given,
    gets the entries of each read as read instead (``output.print_json_entries``: no event built).
    ``gather_s``: after a read that found under half a batch, wait this long before the
    next, so a steady flow is read and printed in batches rather than a few entries per call
    (each call and each flush has a cost of its own); the lines then lag by up to that much.
    """
    import redis as _redis

    while True:
        try:
            got: Any = client.xread({stream: last}, count=BATCH, block=block_ms)
        except _redis.RedisError as exc:
            if done():
                return
            if on_lost is not None:
                on_lost(exc)
            time.sleep(0.5)
            continue
        for _s, entries in got or []:
            if not entries:
                continue
            last = as_str(entries[-1][0])
            if render_entries is not None:
                render_entries(entries)
            else:
                for entry_id, fields in entries:
                    render(Event.decode(entry_id, fields))
        if got:
            output.flush_stdout()
            if gather_s and sum(len(entries) for _s, entries in got) < BATCH // 2 and not done():
                time.sleep(gather_s)
        if output.stdout_closed():
            return  # `tail | head -5` got its lines; nobody is left to print to
        if not got and done():
            return
