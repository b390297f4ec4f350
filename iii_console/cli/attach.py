"""``iii-console attach``: the live console on a deployment that runs elsewhere."""

from __future__ import annotations

import click

from iii_console.cli.common import common_options, existing_redis, load_project
from iii_console.core import replication
from iii_console.runtime.brokers import console_broker


@click.command()
@click.option(
    "--read-only/--read-write",
    default=True,
    show_default=True,
    help="Read-only hides every action that writes (send, replay, purge, state edits).",
)
@click.option("--server-url", default=None, metavar="URL", help="Server to post test messages to (with --read-write).")
@common_options
def attach(read_only: bool, server_url: str | None, config_path: str | None, redis_url: str | None) -> None:
    """Open the console on a deployment that runs elsewhere, or on this project's running one; starts nothing."""
    from iii_console.tui.app import create_app

    cfg = load_project(config_path, redis_url)
    url = existing_redis(cfg)
    # The console's replays and state edits WAIT for replicas as the roles' writes do.
    replication.configure(replication.from_config(cfg.with_overrides(**{"redis.url": url}).redis))
    create_app(
        redis_url=url,
        prefix=cfg.redis.prefix,
        server_url=None if read_only else server_url,
        read_only=read_only,
        title="iii-console (attached)",
        events_maxlen=cfg.events.maxlen,
        broker=console_broker(cfg),
    ).run()
