"""The command line: parse, call the runtime, render errors. Nothing else.

The ``iii-console`` group and its options live here; each command family is a
module of its own, registered from :data:`COMMANDS`. Those modules import
:mod:`iii_console.cli.common`, never this one.

Exit codes: 0 ok, 1 runtime error, 2 bad usage or invalid config/steps,
3 Redis unreachable, 130 interrupted.
"""

from __future__ import annotations

from typing import Any

import click

from iii_console.cli.attach import attach
from iii_console.cli.common import UserError, common_options, load_project
from iii_console.cli.cron import cron_cmd
from iii_console.cli.dlq import dlq
from iii_console.cli.new import new
from iii_console.cli.project import config_cmd, steps_cmd
from iii_console.cli.run import ROLE_CHOICES, run_project
from iii_console.cli.send import send
from iii_console.cli.state import state_cmd
from iii_console.cli.tail import tail
from iii_console.cli.web import web
from iii_console.core.errors import IIIError
from iii_console.core.text import printable


class IIIGroup(click.Group):
    """Renders our errors at the edge, for every subcommand, however it is invoked."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IIIError as err:
            raise UserError(err) from None


@click.group(cls=IIIGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--no-ui", is_flag=True, help="Run headless: one JSON event per line on stdout (for production).")
@click.option(
    "--role",
    type=click.Choice(ROLE_CHOICES),
    multiple=True,
    default=("all",),
    show_default=True,
    help="Which parts this process runs; repeat for several.",
)
@click.option("--processes", type=click.IntRange(1, 256), default=None, help="Worker processes (default: workers.processes).")
@click.option(
    "--threads", type=click.IntRange(1, 1000), default=None, help="Threads per worker process, capping each queue's concurrency."
)
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="HTTP port (default: server.port).")
@click.option("--host", default=None, help="HTTP bind address (default: server.host).")
@click.option(
    "--reload/--no-reload",
    default=None,
    help="Reload steps when their files change (default: on in the console, off with --no-ui).",
)
@common_options
@click.version_option(package_name="iii-console")
@click.pass_context
def cli(
    ctx: click.Context,
    no_ui: bool,
    role: tuple[str, ...],
    processes: int | None,
    threads: int | None,
    port: int | None,
    host: str | None,
    reload: bool | None,
    config_path: str | None,
    redis_url: str | None,
) -> None:
    """Run the project's steps: HTTP server, queue workers and cron scheduler, with a live console.

    Without a subcommand it runs everything in this terminal. See `iii-console COMMAND --help`.
    """
    if ctx.invoked_subcommand is not None:
        # --config and --redis pass on to the subcommand (``_inherited``); these run the project only.
        given = [
            flag
            for flag, on in (
                ("--no-ui", no_ui),
                ("--role", role != ("all",)),
                ("--processes", processes is not None),
                ("--threads", threads is not None),
                ("--port", port is not None),
                ("--host", host is not None),
                ("--reload/--no-reload", reload is not None),
            )
            if on
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: only for running the project (`iii-console` with no command), "
                f"not for `{ctx.invoked_subcommand}`"
            )
        return
    cfg = load_project(config_path, redis_url, **{"server.port": port, "server.host": host})
    ctx.exit(run_project(cfg, role, processes, threads, no_ui, reload))


#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: list[click.Command] = [attach, web, send, tail, dlq, state_cmd, steps_cmd, config_cmd, cron_cmd, new]

for _command in COMMANDS:
    cli.add_command(_command)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="iii-console", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as e:
        # A command group without its subcommand (`iii-console dlq`): its help, as it reads, not flattened into a line.
        click.echo(e.format_message(), err=True)
        return e.exit_code
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
