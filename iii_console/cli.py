"""The command line: parse, call the runtime, render errors. Nothing else.

Exit codes: 0 ok, 1 runtime error, 2 bad usage or invalid config/steps,
3 Redis unreachable, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import click

from iii_console.core.config import Config, load_config, load_dotenv, redact_url, redis_url_problem
from iii_console.core.errors import IIIError, RedisUnavailable
from iii_console.core.events import EVENT_TYPES, Event
from iii_console.core.text import printable

ROLE_CHOICES = ("all", "server", "worker", "scheduler")


def _load(config_path: str | None, redis_url: str | None, **overrides: Any) -> Config:
    # The project's .env (beside iii-config.yaml), as Motia reads it: under the environment.
    load_dotenv(Path(config_path).resolve().parent if config_path else Path.cwd())
    env = None
    if redis_url is not None:
        problem = redis_url_problem(redis_url.strip())
        if problem:
            raise click.BadParameter(problem, param_hint="--redis")
        # The flag wins over the environment, so a bad REDIS_URL it replaces is no error.
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    cfg = load_config(config_path, env=env)
    # --broker (every command) and RABBITMQ_URL, over the file.
    broker = {"broker": os.environ.get("III_BROKER") or None, "rabbitmq.url": os.environ.get("RABBITMQ_URL") or None}
    return cfg.with_overrides(**{"redis.url": redis_url.strip() if redis_url else redis_url, **broker, **overrides})


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, envvar="III_CONFIG",
                      help="Path to iii-config.yaml (default: ./iii-config.yaml).")(fn)
    fn = click.option("--redis", "redis_url", default=None, metavar="URL",
                      help="Redis URL (redis://, rediss://, unix://). Overrides REDIS_URL and the config file.")(fn)
    fn = click.option("--broker", type=click.Choice(("redis", "rabbitmq")), default=None, expose_value=False, is_eager=True,
                      callback=_set_broker, help="Where queue messages live (default: broker in the config, else redis).")(fn)
    return fn


def _set_broker(_ctx: click.Context, _param: Any, value: str | None) -> None:
    """``--broker`` is read by ``_load`` (through III_BROKER, which worker processes inherit)."""
    if value:
        os.environ["III_BROKER"] = value


def _existing_redis(cfg: Config) -> str:
    """Redis for client commands: configured, or the running project's embedded one."""
    from iii_console.runtime.embedded import running_url
    from iii_console.runtime.supervisor import check_redis

    url = cfg.redis.url or running_url(cfg.data_dir)
    if not url:
        raise RedisUnavailable("no Redis to talk to: start `iii-console` in this project first, or pass --redis URL")
    check_redis(url)
    return url


class UserError(click.ClickException):
    """An :class:`IIIError` on its way out: one line on stderr, its own exit code."""

    def __init__(self, err: IIIError):
        super().__init__(str(err))
        self.exit_code = err.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {printable(self.message)}", err=True)


class IIIGroup(click.Group):
    """Renders our errors at the edge, for every subcommand, however it is invoked."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IIIError as err:
            raise UserError(err) from None


@click.group(cls=IIIGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--no-ui", is_flag=True, help="Run headless: one JSON event per line on stdout (for production).")
@click.option("--role", type=click.Choice(ROLE_CHOICES), multiple=True, default=("all",), show_default=True,
              help="Which parts this process runs; repeat for several.")
@click.option("--processes", type=click.IntRange(1, 256), default=None, help="Worker processes (default: workers.processes).")
@click.option("--threads", type=click.IntRange(1, 1000), default=None, help="Threads per worker process, capping each queue's concurrency.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="HTTP port (default: server.port).")
@click.option("--host", default=None, help="HTTP bind address (default: server.host).")
@click.option("--reload/--no-reload", default=None, help="Reload steps when their files change (default: on in the console, off with --no-ui).")
@_common
@click.version_option(package_name="iii-console")
@click.pass_context
def cli(ctx: click.Context, no_ui: bool, role: tuple[str, ...], processes: int | None, threads: int | None,
        port: int | None, host: str | None, reload: bool | None, config_path: str | None, redis_url: str | None) -> None:
    """Run the project's steps: HTTP server, queue workers and cron scheduler, with a live console.

    Without a subcommand it runs everything in this terminal. See `iii-console COMMAND --help`.
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg = _load(config_path, redis_url, **{"server.port": port, "server.host": host})
    roles = ("server", "worker", "scheduler") if "all" in role else tuple(dict.fromkeys(role))
    watch = (not no_ui) if reload is None else reload
    if no_ui or not sys.stdout.isatty():
        render: Callable[[Event], None] = _print_json if no_ui else _print_human
        _reserve_stdout()
        code = asyncio.run(_run_headless(cfg, roles, processes, threads, render, watch))
    else:
        code = asyncio.run(_run_console(cfg, roles, processes, threads, watch))
    ctx.exit(code)


#: Where events are printed: stdout, or a private copy of it once ``_reserve_stdout`` ran.
_events_out: Any = None
#: Set when the reader of our stdout went away (``| head``): there is nobody left to print to.
_stdout_closed = False


def _out() -> Any:
    return _events_out if _events_out is not None else sys.stdout


def _reserve_stdout() -> None:
    """Keep stdout for the event lines alone: anything else written to it goes to stderr.

    A ``print()`` in a step handler, a library that logs to stdout, or a worker
    process (they inherit the descriptor) would otherwise interleave with the JSON
    lines and break whatever parses them. Events keep a private duplicate of the
    original stdout; descriptor 1 then points at stderr.
    """
    global _events_out
    try:
        os.fstat(1)
    except OSError:
        # Started with stdout closed (`>&-`): Python left sys.stdout None, which breaks
        # libraries that log to it (uvicorn's logging config). Nobody reads events then.
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != 1:
            os.dup2(devnull, 1)
            os.close(devnull)
        sys.stdout = open(1, "w", closefd=False)
    sys.stdout.flush()
    _events_out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    os.dup2(2, 1)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # now stderr-bound: shown as it is printed


def _stdout_gone() -> None:
    """Point the event stream at /dev/null, so what is buffered and any later write go nowhere quietly."""
    global _stdout_closed
    _stdout_closed = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, _out().fileno())
    finally:
        os.close(devnull)


def _print_json(ev: Event) -> None:
    """One JSON line; flushed by the caller once per batch read (``flush``), not per event."""
    from iii_console.format import json_line

    try:
        _out().write(json_line(ev) + "\n")
    except BrokenPipeError:
        _stdout_gone()


def _flush_stdout() -> None:
    try:
        _out().flush()
    except BrokenPipeError:
        _stdout_gone()


_print_json.flush = _flush_stdout  # type: ignore[attr-defined]


def _print_human(ev: Event) -> None:
    from rich.console import Console
    from rich.text import Text

    from iii_console.format import TYPE_STYLE, line

    con = _print_human.__dict__.setdefault("console", Console(file=_out(), highlight=False, soft_wrap=True))
    try:
        con.print(Text(line(ev), style=TYPE_STYLE.get(ev.type, "")))
    except BrokenPipeError:
        _stdout_gone()


async def _run_headless(cfg: Config, roles: tuple[str, ...], processes: int | None, threads: int | None,
                        render: Callable[[Event], None], watch: bool = False) -> int:
    from iii_console.runtime.recycling import RECYCLE_EXIT
    from iii_console.runtime.supervisor import Supervisor

    sup = Supervisor(cfg, roles=roles, processes=processes, threads=threads, on_event=render if cfg.events.echo else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sup.start()
    if watch:
        sup.watch()
    where = f" on http://{cfg.server.host}:{sup.port}" if sup.port else ""
    version, warning = _redis_version(sup.config.redis.url)
    print(f"iii-console: running {', '.join(roles)}{where} with Redis {version} at {redact_url(sup.config.redis.url)}; "
          f"{len(sup.steps.steps)} steps, {len(sup.steps.errors)} errors. Ctrl+C to stop.", file=sys.stderr)
    for err in sup.steps.errors:
        print(f"step error: {printable(err)}", file=sys.stderr)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    await stop.wait()
    print("iii-console: stopping (draining in-flight work)...", file=sys.stderr)
    await sup.stop()
    bad = [c for c in sup.worker_codes if c not in (0, None, -signal.SIGTERM, RECYCLE_EXIT)]
    return 1 if bad else 0


def _redis_version(url: str) -> tuple[str, str | None]:
    """The Redis server's version for the banner, and a warning if it has known security issues."""
    import redis as _redis

    from iii_console.core.redis_server import server_version, version_warning
    from iii_console.runtime.services import redis_client

    client = redis_client(url, socket_timeout=3)
    try:
        version = server_version(client)
    except _redis.RedisError:
        return "(version unknown)", None
    finally:
        client.close()
    return version, version_warning(version)


async def _run_console(cfg: Config, roles: tuple[str, ...], processes: int | None, threads: int | None, watch: bool) -> int:
    """The live console owns the terminal; the runtime runs in the same loop, its logs go to .iii/logs/."""
    import logging

    from iii_console.runtime.supervisor import Supervisor
    from iii_console.tui.app import create_app

    from iii_console.core.files import private_dir, private_file

    private_dir(cfg.data_dir)
    log_dir = private_dir(cfg.data_dir / "logs")  # step output and tracebacks: this user's only
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(private_file(log_dir / "console.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    sup = Supervisor(cfg, roles=roles, processes=processes, threads=threads, on_event=None, log_dir=log_dir)
    await sup.start()
    if watch:
        sup.watch()
    server_url = f"http://{'127.0.0.1' if cfg.server.host in ('0.0.0.0', '::') else cfg.server.host}:{sup.port}" if sup.port else None
    app = create_app(redis_url=sup.config.redis.url, prefix=cfg.redis.prefix, server_url=server_url,
                     events_maxlen=cfg.events.maxlen, broker=cfg if cfg.broker != "redis" else None)
    app.notice = _redis_version(sup.config.redis.url)[1]
    try:
        await app.run_async()
    finally:
        await sup.stop()
    return 0


# -- attach -------------------------------------------------------------------

@cli.command()
@click.option("--read-only/--read-write", default=True, show_default=True,
              help="Read-only hides every action that writes (send, replay, purge, state edits).")
@click.option("--server-url", default=None, metavar="URL", help="Server to post test messages to (with --read-write).")
@_common
def attach(read_only: bool, server_url: str | None, config_path: str | None, redis_url: str | None) -> None:
    """Open the console on a deployment that runs elsewhere, or on this project's running one; starts nothing."""
    from iii_console.tui.app import create_app

    cfg = _load(config_path, redis_url)
    url = _existing_redis(cfg)
    create_app(redis_url=url, prefix=cfg.redis.prefix, server_url=None if read_only else server_url,
               read_only=read_only, title="iii-console (attached)", events_maxlen=cfg.events.maxlen,
               broker=cfg if cfg.broker != "redis" else None).run()


# -- send ---------------------------------------------------------------------

@cli.command()
@click.argument("text", required=False)
@click.option("--topic", default=None, help="Enqueue straight to this topic instead of POSTing to the server.")
@click.option("--data", default=None, metavar="JSON", help="Message data as JSON (with --topic).")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None, help="Message priority.")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=1, show_default=True, help="How many to send.")
@click.option("--url", default=None, help="Server base URL (default: from server.host/port).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per message sent.")
@_common
def send(text: str | None, topic: str | None, data: str | None, priority: str | None, count: int, url: str | None,
         as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Inject test messages.

    \b
    iii-console send "hello" --priority high        POST to the running server's /messages
    iii-console send --topic message.sent --data '{"id": "m1", "text": "hi"}'   enqueue directly
    """
    if topic is None and data is not None:
        raise click.UsageError("--data needs --topic (or pass TEXT to post to the server)")
    if topic is None and not text:
        raise click.UsageError("give TEXT to post, or --topic with --data")
    if topic is not None and text:
        raise click.UsageError("give either TEXT or --topic/--data, not both")
    cfg = _load(config_path, redis_url)
    sent = _send_topic(cfg, topic, data, priority, count, as_json) if topic else _send_http(cfg, url, text or "", priority, count, as_json)
    if not as_json:
        click.echo(f"sent {sent} message{'s' if sent != 1 else ''}", err=True)


def _progress(count: int, as_json: bool) -> Any:
    from rich.progress import Progress

    return Progress(disable=count < 2 or as_json or not sys.stderr.isatty(), transient=True,
                    console=__import__("rich.console").console.Console(stderr=True))


def _send_http(cfg: Config, url: str | None, text: str, priority: str | None, count: int, as_json: bool) -> int:
    import httpx

    if url is None and cfg.server.port == 0:
        raise click.UsageError("server.port is 0 (any free port), so the server's address is not known here: "
                               "pass --url with the address the running server printed")
    base = (url or f"http://{cfg.server.host}:{cfg.server.port}").rstrip("/")
    body: dict[str, Any] = {"text": text}
    if priority:
        body["priority"] = priority
    token = cfg.server.auth_token or os.environ.get("III_AUTH_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent = 0
    with httpx.Client(base_url=base, timeout=10, headers=headers) as client, _progress(count, as_json) as progress:
        task = progress.add_task("sending", total=count)
        for _ in range(count):
            try:
                r = client.post("/messages", json=body)
            except httpx.ConnectError:
                raise IIIError(f"no iii-console server at {base}: is `iii-console` running? (or pass --url)") from None
            except httpx.HTTPError as exc:
                raise IIIError(f"request to {base}/messages failed: {exc}") from None
            if r.status_code >= 400:
                raise IIIError(f"server answered {r.status_code}: {printable(r.text[:500])}")
            sent += 1
            if as_json:
                click.echo(json.dumps(r.json()))
            progress.advance(task)
    return sent


def parse_json_arg(text: str, hint: str) -> Any:
    """JSON given on the command line, or a one-line ``BadParameter`` naming ``hint``."""
    from iii_console.core.events import loads_finite

    try:
        return loads_finite(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from None
    except RecursionError:
        raise click.BadParameter("JSON nested too deeply (more than ~900 levels)", param_hint=hint) from None
    except ValueError as exc:  # NaN, Infinity, a number too large for a float, an integer of more than 4,300 digits
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from None


def _send_topic(cfg: Config, topic: str, data: str | None, priority: str | None, count: int, as_json: bool) -> int:
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.runtime.runner import StepRunner
    from iii_console.runtime.services import Services

    payload = parse_json_arg(data, "--data") if data is not None else {}
    url = _existing_redis(cfg)
    cfg = cfg.with_overrides(**{"redis.url": url})
    steps = discover(cfg.steps_path)
    subs = subscriptions_for(steps.steps)
    if topic not in subs:
        known = ", ".join(steps.topics) or "none"
        raise click.BadParameter(f"no step subscribes to {topic!r} (topics: {known})", param_hint="--topic")
    services = Services.open(cfg, "cli")
    sent = 0
    try:
        runner = StepRunner(services, subs)
        with _progress(count, as_json) as progress:
            task = progress.add_task("enqueueing", total=count)
            for _ in range(count):
                trace_id = uuid.uuid4().hex
                ids = runner.producer.enqueue(topic, payload, trace_id=trace_id, priority=priority, source="cli") or []
                sent += 1
                if as_json:
                    click.echo(json.dumps({"trace_id": trace_id, "message_ids": ids, "topic": topic}))
                progress.advance(task)
    finally:
        services.close()
    return sent


# -- tail ---------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only these event types; a trailing dot matches a family (message.). Repeatable.")
@click.option("--trace", default=None, metavar="ID", help="Only events of this trace id (a prefix is enough).")
@click.option("--history", type=click.IntRange(0, 100_000), default=0, help="First print up to N past events.")
@_common
def tail(as_json: bool, types: tuple[str, ...], trace: str | None, history: int, config_path: str | None, redis_url: str | None) -> None:
    """Print live events from the event stream."""
    import redis as _redis

    for t in types:
        if t not in EVENT_TYPES and not (t.endswith(".") and any(e.startswith(t) for e in EVENT_TYPES)):
            raise click.BadParameter(f"unknown event type {t!r}; known: {', '.join(EVENT_TYPES)}", param_hint="--type")
    cfg = _load(config_path, redis_url)
    url = _existing_redis(cfg)
    from iii_console.core.keys import Keys
    from iii_console.runtime.services import redis_client

    keys = Keys(cfg.redis.prefix)
    client = redis_client(url, socket_timeout=None)
    render = _print_json if as_json else _print_human

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
        _flush_stdout()
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
            _flush_stdout()
            if _stdout_closed:
                return  # `tail | head -5` got its lines
    except KeyboardInterrupt:
        pass


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    import iii_console.cli_ops  # noqa: F401  (registers dlq/state/steps/config commands)

    try:
        cli.main(args=argv, prog_name="iii-console", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as e:
        # click's own rendering is a usage block, a blank line and the error: one line instead.
        where = e.ctx.command_path if e.ctx is not None else "iii-console"
        click.echo(f"error: {printable(_one_line(e.format_message()))} (see '{where} --help')", err=True)
        return e.exit_code
    except click.ClickException as e:
        if isinstance(e, UserError):
            e.show()
        else:
            click.echo(f"error: {printable(e.format_message())}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run through the package module so the operator commands register on this group.
    from iii_console.cli import main as _main

    sys.exit(_main())
