"""``iii-console web``: the console in a browser (the ``web`` extra, textual-serve)."""

from __future__ import annotations

import os
import sys

import click

from iii_console.cli.common import common_options, existing_redis, load_project
from iii_console.core.errors import ConfigError, IIIError


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; beyond loopback only with server.auth_token set.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=3112, show_default=True, help="Port to listen on (0: any free one)."
)
@click.option(
    "--allow-actions", is_flag=True, help="Let browsers send, replay, purge, run cron steps and edit state (default: read-only)."
)
@click.option(
    "--server-url",
    default=None,
    metavar="URL",
    help="Server the console's `s` posts test messages to (with --allow-actions; default: server.host/port).",
)
@click.option(
    "--public-url", default=None, metavar="URL", help="The address browsers use, when it is not this one (a TLS proxy in front)."
)
@common_options
def web(
    host: str,
    port: int,
    allow_actions: bool,
    server_url: str | None,
    public_url: str | None,
    config_path: str | None,
    redis_url: str | None,
) -> None:
    """Serve the console to a browser: each tab gets its own console, attached read-only unless --allow-actions.

    Open the printed address; with server.auth_token set (or III_AUTH_TOKEN) add ?token=TOKEN once.
    Starts no server, worker or scheduler: run `iii-console` for those.
    """
    try:
        from iii_console.core.config import is_loopback_host
        from iii_console.tui.web import ConsoleServer, console_command
    except ImportError as exc:
        raise IIIError(f"the console in a browser needs {exc.name or 'textual-serve'}: pip install 'iii-console[web]'") from None

    cfg = load_project(config_path, redis_url)
    token = cfg.server.auth_token or os.environ.get("III_AUTH_TOKEN", "")
    if not is_loopback_host(host) and not token:
        raise ConfigError(
            f"refusing to serve the console on {host} without server.auth_token (anyone who can reach it "
            "would read every payload and dead letter); set one (or III_AUTH_TOKEN), or bind 127.0.0.1",
            key="server.auth_token",
        )
    url = existing_redis(cfg)
    if allow_actions and server_url is None and cfg.server.port:
        server_url = f"http://{cfg.server.host}:{cfg.server.port}"
    # Each browser tab's console process reads the Redis URL (its password too) from here, not its command line.
    os.environ["REDIS_URL"] = url
    mode = "actions allowed" if allow_actions else "read-only"

    def ready(address: str) -> None:
        hint = " (add ?token=TOKEN)" if token else ""
        click.echo(f"iii-console web: the console on {address}{hint}, {mode}; Ctrl+C stops", err=True)
        sys.stderr.flush()

    server = ConsoleServer(
        console_command(allow_actions=allow_actions, server_url=server_url, config_path=config_path),
        host=host,
        port=port,
        token=token,
        public_url=public_url.rstrip("/") if public_url else None,
        title="iii-console",
        on_ready=ready,
    )
    try:
        server.serve()
    except OSError as exc:
        raise IIIError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (pass --port)") from None
