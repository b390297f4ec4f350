"""``iii-console`` without a subcommand: run the project's roles, headless or with the live console."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any

from iii_console.cli.output import events_out, reserve_stdout
from iii_console.core.config import Config, redact_url
from iii_console.core.text import printable
from iii_console.runtime.brokers import console_broker

if TYPE_CHECKING:
    from iii_console.runtime.echo import EchoCommand

ROLE_CHOICES = ("all", "server", "worker", "scheduler")


def run_project(
    cfg: Config, role: tuple[str, ...], processes: int | None, threads: int | None, no_ui: bool, reload: bool | None
) -> int:
    """Run the roles ``role`` names until Ctrl+C / SIGTERM; the exit code."""
    from iii_console.runtime import hangup

    roles = ("server", "worker", "scheduler") if "all" in role else tuple(dict.fromkeys(role))
    watch = (not no_ui) if reload is None else reload
    watched = hangup.watched()
    try:
        if no_ui or not sys.stdout.isatty():
            from iii_console.runtime.echo import EchoCommand

            reserve_stdout()
            echo = EchoCommand([sys.executable, "-m", "iii_console.cli.echo", "json" if no_ui else "human"], events_out())
            from iii_console.runtime.loop import run as run_loop

            return run_loop(_run_headless(cfg, roles, processes, threads, echo, watch))
        return asyncio.run(_run_console(cfg, roles, processes, threads, watch))
    finally:
        # The loop has closed, its signal handlers with it (SIGHUP's default is back: die), and the process
        # is leaving: a hang-up now, a second one or one that came late, must not cut its last steps short.
        if watched:
            hangup.ignore()


async def _run_headless(
    cfg: Config,
    roles: tuple[str, ...],
    processes: int | None,
    threads: int | None,
    echo: EchoCommand,
    watch: bool = False,
) -> int:
    import gc
    import logging

    from iii_console.runtime import hangup
    from iii_console.runtime.hardstop import HardStop
    from iii_console.runtime.recycling import RECYCLE_EXIT
    from iii_console.runtime.supervisor import Supervisor

    # Warnings and errors of this process (the server, the scheduler, the supervisor) on stderr,
    # in the workers' format; INFO of libraries stays out of the terminal.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s server %(process)d %(name)s: %(message)s", stream=sys.stderr)
    hangup.keep_writing()  # an HTTP step's print to output nobody reads any more must not fail its request
    sup = Supervisor(
        cfg, roles=roles, processes=processes, threads=threads, echo=echo if cfg.events.echo else None, say=_say_slow()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hangup.watch_loop(loop, stop.set)  # the terminal closed: stop as SIGTERM does (not under nohup)
    await sup.start()
    # What start-up built (modules, the app, the steps, the clients) lives as long as the process: frozen,
    # the cyclic collector's full passes no longer walk it (~30 ms each, about once a second under load).
    gc.collect()
    gc.freeze()
    if watch:
        sup.watch()
    where = f" on http://{cfg.server.host}:{sup.port}" if sup.port else ""
    version, warning = _redis_version(sup.config.redis.url)
    _say(
        f"iii-console: running {', '.join(roles)}{where} with Redis {version} at {redact_url(sup.config.redis.url)}; "
        f"{len(sup.steps.steps)} steps, {len(sup.steps.errors)} errors. Ctrl+C to stop."
    )
    for err in sup.steps.errors:
        _say(f"step error: {printable(err)}")
    if warning:
        _say(f"warning: {warning}")
    await stop.wait()
    _say("iii-console: stopping (draining in-flight work)...")
    hard = HardStop("", kill=sup.kill_children)
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl+C or SIGTERM: stop now
        loop.add_signal_handler(sig, hard.now, "a second signal")
    with hard.armed(sup.config.workers.shutdown_timeout):
        await sup.stop()
    bad = [c for c in sup.worker_codes if c not in (0, None, -signal.SIGTERM, RECYCLE_EXIT)]
    return 1 if bad else 0


def _say(line: str) -> None:
    """A line on stderr that nobody may be reading any more (a log shipper that died, a closed
    terminal): the run and its stop go on whether or not it could be written."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _say_slow() -> Any:
    """Where a start names a slow step import: stderr, when a person reads it there (a terminal). Piped, the
    banner stays stderr's first line, which the pytest plugin and supervisors' scripts wait for."""
    try:
        return _say if sys.stderr.isatty() else None
    except (AttributeError, ValueError):  # stderr closed or replaced
        return None


def _redis_version(url: str) -> tuple[str, str | None]:
    """The Redis server's version for the banner, and a warning if it has known security issues."""
    import redis as _redis

    from iii_console.core.connection import redis_client
    from iii_console.core.redis_server import server_version, version_warning

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

    from iii_console.core.files import private_dir, private_file
    from iii_console.runtime import hangup
    from iii_console.runtime.hardstop import HardStop
    from iii_console.runtime.supervisor import Supervisor
    from iii_console.tui.app import create_app

    private_dir(cfg.data_dir)
    log_dir = private_dir(cfg.data_dir / "logs")  # step output and tracebacks: this user's only
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(private_file(log_dir / "console.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    sup = Supervisor(cfg, roles=roles, processes=processes, threads=threads, log_dir=log_dir, say=_say_slow())
    await sup.start()
    if watch:
        sup.watch()
    server_url = (
        f"http://{'127.0.0.1' if cfg.server.host in ('0.0.0.0', '::') else cfg.server.host}:{sup.port}" if sup.port else None
    )
    app = create_app(
        redis_url=sup.config.redis.url,
        prefix=cfg.redis.prefix,
        server_url=server_url,
        events_maxlen=cfg.events.maxlen,
        broker=console_broker(cfg),
    )
    app.notice = _redis_version(sup.config.redis.url)[1]
    app.local_workers = sup.processes if "worker" in roles else 0
    app.driver_class = outliving_output(app.driver_class)
    terminal = _TerminalState()

    def kill() -> None:
        sup.kill_children()
        terminal.restore()

    hard = HardStop("", kill=kill, log=log_dir / "console.log")
    shutdown_timeout = sup.config.workers.shutdown_timeout

    async def stop_runtime() -> None:
        # However the leaving goes (the runtime's stop, the UI's exit, the interpreter's), it ends by
        # the deadline; the terminal is given back first.
        hard.leaving(shutdown_timeout)
        await sup.stop()

    def leave() -> None:
        hard.leaving(shutdown_timeout)
        app.exit()

    app.stop_runtime = stop_runtime
    loop = asyncio.get_running_loop()
    # SIGTERM (a `kill`, a wrapper that died) and a hang-up leave as `q` does: the runtime then
    # drains and stops its Redis, instead of the process dying with its workers mid-stop.
    loop.add_signal_handler(signal.SIGTERM, leave)
    hangup.watch_loop(loop, leave)
    try:
        await app.run_async()
    finally:
        # The console is gone (its terminal restored): a Ctrl+C or SIGTERM now stops at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, hard.now, "a second signal")
        await stop_runtime()  # at once if `q` already stopped it
    if app.stop_error is not None:
        raise app.stop_error
    return 0


def outliving_output(driver_class: type[Any]) -> type[Any]:
    """``driver_class`` whose output outlives its terminal.

    Textual writes the screen from one thread through a queue of 30 writes; the first write that
    fails (a terminal closed under it, before the hang-up's signal is handled or without one) ends
    that thread, and the UI's next writes then block on the full queue for good, its exit with
    them. Here a write nobody can read any more goes to ``/dev/null`` instead.
    """
    from iii_console.runtime import hangup

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        driver_class.__init__(self, *args, **kwargs)
        if getattr(self, "_file", None) is not None:
            self._file = hangup.outliving(self._file)

    return type(driver_class.__name__, (driver_class,), {"__init__": __init__, "__module__": __name__})


class _TerminalState:
    """The terminal's modes before the console took it, to give back on a forced exit (the console,
    stopped from another thread, cannot restore them itself)."""

    #: Leave the alternate screen; show the cursor; mouse reporting, focus events and bracketed paste off.
    RESET = b"\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1004l\x1b[?2004l"

    def __init__(self) -> None:
        self.attrs: list | None = None
        try:
            import termios

            self.attrs = termios.tcgetattr(sys.__stdin__.fileno()) if sys.__stdin__ and sys.__stdin__.isatty() else None
        except (ImportError, OSError, ValueError):  # Windows, or no terminal
            pass

    def restore(self) -> None:
        if self.attrs is None:
            return
        import os
        import termios

        try:
            termios.tcsetattr(sys.__stdin__.fileno(), termios.TCSANOW, self.attrs)  # type: ignore[union-attr]
            tty = os.open("/dev/tty", os.O_WRONLY | os.O_NOCTTY)
            try:
                os.write(tty, self.RESET)
            finally:
                os.close(tty)
        except (OSError, ValueError, termios.error):
            pass
