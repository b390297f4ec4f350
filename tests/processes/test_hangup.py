"""A hang-up: `iii-console --no-ui` in a terminal that closes (an SSH session dropped) stops
the way SIGTERM does, and under `nohup` it goes on. A stop drains whether or not anyone still
reads the run's output.

The run gets a pseudo-terminal of its own as its controlling terminal, as a shell's job has.
The hang-up is what the kernel and the shell do when the terminal goes: the terminal's
master side closes (the run's later writes to it fail with EIO) and the whole job gets SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import cli_env, make_project, wait_for

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")

#: A queue step that holds its run until a file exists, and prints on both sides of the wait:
#: the print after it happens once the terminal is gone.
GATED = """
import os, time
from iii_console import Step, queue
config = Step(name="Gated", triggers=[queue("gated")])
def handler(data, ctx):
    print("print before the gate")
    ctx.state.set("gated", data["k"], {"status": "running"})
    while not os.path.exists(data["gate"]):
        time.sleep(0.02)
    print("print after the gate")
    ctx.state.set("gated", data["k"], {"status": "done"})
"""


class Terminal:
    """A pseudo-terminal whose master side is read into ``text`` until ``hang_up``."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.text = ""
        self._open = True
        self._reader = threading.Thread(target=self._read, daemon=True)

    def controlling(self) -> None:
        """A ``preexec_fn`` (after ``start_new_session``'s setsid): this terminal becomes the child's."""
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)

    def start(self) -> None:
        os.close(self.slave)
        self._reader.start()

    def _read(self) -> None:
        while self._open:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready or not self._open:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")

    def close(self) -> None:
        """Close the terminal's master side: the job's reads and writes on it fail from now on."""
        self._open = False
        self._reader.join(5)
        os.close(self.master)

    def hang_up(self, job: int) -> None:
        """Close the terminal, then SIGHUP the job's process group, as the shell it ran in would."""
        self.close()
        os.killpg(job, signal.SIGHUP)


def _start(
    project: Path, term: Terminal, *, stdio: Any, ignore_hup: bool = False, args: tuple[str, ...] = ("--no-ui",)
) -> subprocess.Popen[bytes]:
    def preexec() -> None:
        # What nohup does before it runs the command; or the default an interactive shell gives
        # its jobs (whatever this test process inherited: a CI job may itself run under nohup).
        signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hup else signal.SIG_DFL)
        term.controlling()

    env = cli_env()
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", *args],
        cwd=project,
        env=env,
        start_new_session=True,
        preexec_fn=preexec,
        **stdio,
    )
    term.start()
    return proc


def _send(project: Path, redis_url: str, data: dict[str, str]) -> str:
    sent = subprocess.run(
        [
            sys.executable,
            "-m",
            "iii_console",
            "send",
            "--topic",
            "gated",
            "--data",
            json.dumps(data),
            "--json",
            "--redis",
            redis_url,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    return str(json.loads(sent.stdout)["message_ids"][0])


def _events_after(r: Any, keys: Any, after: bytes) -> list[dict[str, str]]:
    """The stream's entries after entry id ``after``, as text."""
    entries = r.xrange(keys.events, min=b"(" + after)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in entries]


def _workers_stopped(run: list[dict[str, str]]) -> tuple[set[str], dict[str, str]]:
    """The ids of the workers that started in ``run``, and each stopped one's reason."""
    started = {json.loads(e["data"])["id"] for e in run if e["type"] == "worker.started"}
    stopped = {json.loads(e["data"])["id"]: json.loads(e["data"])["reason"] for e in run if e["type"] == "worker.stopped"}
    return started, stopped


def _console_log(project: Path) -> str:
    """The live console's log (where a forced exit's report goes once its terminal is gone)."""
    log = project / ".iii" / "logs" / "console.log"
    return log.read_text(errors="replace") if log.exists() else "(no console.log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_a_hang_up_stops_like_sigterm_and_the_running_handler_finishes(tmp_path, redis_url, r, keys):
    """Given `--no-ui` running in a terminal with a handler mid-run, when the terminal closes,
    then the run drains as on SIGTERM: the handler finishes (its print to the closed terminal
    does not fail it), every worker stops with reason `shutdown`, nothing is redelivered, and
    the run exits 0."""
    make_project(tmp_path, {"gated_step.py": GATED}, "server:\n  port: 0\n", redis_url=redis_url)
    first = r.xrevrange(keys.events, count=1)
    term = Terminal()
    proc = _start(tmp_path, term, stdio={"stdin": term.slave, "stdout": term.slave, "stderr": term.slave})
    gate = tmp_path / "gate"
    try:
        wait_for(lambda: "running" in term.text or proc.poll() is not None, timeout=60, what="the banner")
        assert proc.poll() is None, term.text
        message_id = _send(tmp_path, redis_url, {"k": "a", "gate": str(gate)})
        wait_for(
            lambda: json.loads(r.hget(keys.state_group("gated"), "a") or "{}").get("status") == "running",
            what="the handler to start",
        )
        wait_for(lambda: "print before the gate" in term.text, what="the handler's first print on the terminal")
        term.hang_up(proc.pid)
        time.sleep(1.0)
        assert proc.poll() is None, "the run died at the hang-up instead of draining"  # the handler waits for the gate
        gate.touch()
        assert proc.wait(60) == 0
    finally:
        gate.touch()
        _stop(proc)
    assert json.loads(r.hget(keys.state_group("gated"), "a"))["status"] == "done"
    run = _events_after(r, keys, first[0][0] if first else b"0-0")
    mine = [e for e in run if e.get("message_id") == message_id]
    assert [e["type"] for e in mine if e["type"].startswith("message.")] == [
        "message.enqueued",
        "message.started",
        "message.processed",
    ], mine
    started, stopped = _workers_stopped(run)
    assert started and all(stopped.get(w) == "shutdown" for w in started), (started, stopped)


def test_under_nohup_a_hang_up_changes_nothing(tmp_path, redis_url, r, keys):
    """Given `nohup iii-console --no-ui` (SIGHUP ignored, output to a file), when its terminal
    closes, then it goes on: a message sent after the hang-up is processed, and SIGTERM
    still stops it cleanly."""
    make_project(tmp_path, {"gated_step.py": GATED}, "server:\n  port: 0\n", redis_url=redis_url)
    gate = tmp_path / "gate"
    gate.touch()
    term = Terminal()
    log = tmp_path / "nohup.out"
    with open(log, "wb") as out:
        proc = _start(
            tmp_path, term, stdio={"stdin": subprocess.DEVNULL, "stdout": out, "stderr": subprocess.STDOUT}, ignore_hup=True
        )
    try:
        wait_for(lambda: "running" in log.read_text() or proc.poll() is not None, timeout=60, what="the banner")
        assert proc.poll() is None, log.read_text()
        term.hang_up(proc.pid)
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()
        _send(tmp_path, redis_url, {"k": "after", "gate": str(gate)})
        wait_for(
            lambda: json.loads(r.hget(keys.state_group("gated"), "after") or "{}").get("status") == "done",
            what="a message sent after the hang-up to be processed",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        _stop(proc)
    assert "print after the gate" in log.read_text()


@pytest.mark.parametrize("how", ["hang-up", "sigterm", "late-hang-up", "closed-unannounced"])
def test_the_live_console_leaves_at_a_hang_up_and_stops_its_runtime(tmp_path, redis_url, r, keys, how):
    """Given the live console running in a terminal, when the terminal closes (or SIGTERM
    arrives: a `kill`, a wrapper that died), then it leaves as `q` does: its workers stop with
    reason `shutdown` and it exits 0. So it does when the hang-up's signal comes a second after
    the close, or never (a job `disown`ed from the shell that closed)."""
    make_project(tmp_path, {"gated_step.py": GATED}, "server:\n  port: 0\n", redis_url=redis_url)
    first = r.xrevrange(keys.events, count=1)
    term = Terminal()
    stdio = {"stdin": term.slave, "stdout": term.slave, "stderr": term.slave}
    proc = _start(tmp_path, term, stdio=stdio, args=())
    try:
        wait_for(lambda: "connected" in term.text or proc.poll() is not None, timeout=60, what="the console to draw")
        wait_for(
            lambda: any(e["type"] == "worker.started" for e in _events_after(r, keys, first[0][0] if first else b"0-0")),
            what="its worker to start",
        )
        assert proc.poll() is None
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        elif how == "hang-up":
            term.hang_up(proc.pid)
        else:
            term.close()
            if how == "late-hang-up":
                time.sleep(1.0)
                os.killpg(proc.pid, signal.SIGHUP)
        assert proc.wait(60) == 0, _console_log(tmp_path)
    finally:
        _stop(proc)
    started, stopped = _workers_stopped(_events_after(r, keys, first[0][0] if first else b"0-0"))
    assert started and all(stopped.get(w) == "shutdown" for w in started), (started, stopped)


#: An HTTP step that prints (to stdout, which `--no-ui` points at stderr).
LOUD = """
from iii_console import Step, http
config = Step(name="Loud", triggers=[http("GET", "/loud")])
def handler(req, ctx):
    print("print from an HTTP handler")
    return {"status": 200, "body": {"ok": True}}
"""


def test_a_stop_drains_when_nobody_reads_stderr_any_more(tmp_path, redis_url, r, keys):
    """Given `--no-ui` whose stderr went to a reader that has gone (a log shipper that died),
    when an HTTP step prints, it still answers 200; and when SIGTERM arrives with a handler
    mid-run, neither the "stopping" line's failed write nor the handler's own `print` after it
    cuts anything short: the handler's attempt succeeds, the workers stop with reason
    `shutdown`, and the run exits 0."""
    make_project(tmp_path, {"gated_step.py": GATED, "loud_step.py": LOUD}, "server:\n  port: 0\n", redis_url=redis_url)
    first = r.xrevrange(keys.events, count=1)
    gate = tmp_path / "gate"
    env = cli_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline().decode()
        assert "running" in banner, banner
        message_id = _send(tmp_path, redis_url, {"k": "a", "gate": str(gate)})
        wait_for(
            lambda: json.loads(r.hget(keys.state_group("gated"), "a") or "{}").get("status") == "running",
            what="the handler to start",
        )
        proc.stderr.close()  # the reader goes away: the next write to stderr fails with EPIPE
        url = banner.split(" on ")[1].split(" ")[0]
        for _ in range(3):  # the first print finds the pipe gone; the later ones go to /dev/null
            assert httpx.get(f"{url}/loud", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "the stop ended before the running handler"
        gate.touch()
        assert proc.wait(60) == 0
    finally:
        gate.touch()
        _stop(proc)
    run = _events_after(r, keys, first[0][0] if first else b"0-0")
    assert [e["type"] for e in run if e.get("message_id") == message_id and e["type"].startswith("message.")] == [
        "message.enqueued",
        "message.started",
        "message.processed",
    ]
    started, stopped = _workers_stopped(run)
    assert started and all(stopped.get(w) == "shutdown" for w in started), (started, stopped)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # Textual's own writer, dying
def test_the_consoles_screen_writer_outlives_a_terminal_that_closed():
    """Given the console's output thread writing to a terminal that has closed (each write fails with EIO,
    as in the moment between the close and the hang-up's signal, or with no signal at all), when more
    than its queue's worth of writes follow, then none blocks: the thread goes on, to /dev/null, and
    stops when told. Textual's own thread dies at the first failed write, after which the UI's writes
    block for good on its full queue."""
    from textual.app import App
    from textual.drivers._writer_thread import MAX_QUEUED_WRITES, WriterThread

    from iii_console.cli.run import outliving_output
    from iii_console.runtime import hangup

    def closed_terminal() -> Any:
        master, slave = pty.openpty()
        os.close(master)
        return os.fdopen(slave, "w")

    bare_file = closed_terminal()
    bare = WriterThread(bare_file)
    bare.start()
    bare.write("frame\n")
    bare.join(5)
    assert not bare.is_alive(), "Textual's writer survived a failed write: the wrapper may no longer be needed"
    with contextlib.suppress(OSError):  # what it holds cannot be flushed either
        bare_file.close()

    out = closed_terminal()
    writer = WriterThread(hangup.outliving(out))
    writer.start()
    done = threading.Event()

    def write_all() -> None:
        for _ in range(3 * MAX_QUEUED_WRITES):
            writer.write("frame\n")
        writer.stop()
        done.set()

    threading.Thread(target=write_all, daemon=True).start()
    assert done.wait(10), "the console's writes blocked behind a dead output thread"
    assert os.path.samestat(os.fstat(out.fileno()), os.stat(os.devnull))
    out.close()

    async def make_driver() -> Any:
        return outliving_output(app.driver_class)(app)

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTSTP, signal.SIGCONT)}
    try:
        app = App()
        driver = asyncio.run(make_driver())
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert isinstance(driver, app.driver_class)
    assert driver._file is not sys.__stderr__ and driver._file.fileno() == sys.__stderr__.fileno()


@pytest.mark.slow
def test_a_console_whose_leaving_hangs_ends_by_its_deadline_with_the_report_in_its_log(tmp_path):
    """Given the live console on a Redis that froze (SIGSTOP: connections open, nothing answers), when
    its terminal hangs up, then it still leaves by ``shutdown_timeout`` + ``GRACE_S``, exit code 1, and
    why and where its threads were is in ``.iii/logs/console.log`` (its stderr was the terminal)."""
    from iii_console.core.redis_server import RedisServer
    from iii_console.runtime.hardstop import FORCED_EXIT, GRACE_S

    server = RedisServer(tmp_path / "redis").start()
    assert server.proc is not None
    make_project(
        tmp_path, {"gated_step.py": GATED}, "server:\n  port: 0\nworkers:\n  shutdown_timeout: 1\n", redis_url=server.url
    )
    term = Terminal()
    proc = _start(tmp_path, term, stdio={"stdin": term.slave, "stdout": term.slave, "stderr": term.slave}, args=())
    frozen = False
    try:
        wait_for(lambda: "connected" in term.text or proc.poll() is not None, timeout=60, what="the console to draw")
        assert proc.poll() is None
        os.kill(server.proc.pid, signal.SIGSTOP)
        frozen = True
        t0 = time.monotonic()
        term.hang_up(proc.pid)
        code = proc.wait(1 + GRACE_S + 20)
        took = time.monotonic() - t0
    finally:
        if frozen:
            os.kill(server.proc.pid, signal.SIGCONT)
        _stop(proc)
        server.stop()
    log = _console_log(tmp_path)
    assert code == FORCED_EXIT, log
    assert took < 1 + GRACE_S + 8, (took, log)
    assert f"the stop did not end within {1 + GRACE_S:g} s; stopping now" in log, log
    assert "Where its threads were:" in log and 'File "' in log, log
