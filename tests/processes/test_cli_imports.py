"""The client commands talk to a running deployment without loading the server or queue libraries.

Each runs for real, in its own interpreter, against a real Redis; a small wrapper
records ``sys.modules`` as the command ends (or, for the console, while it runs).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import cli_env, make_project

HEAVY = ("litestar", "uvicorn", "dramatiq")

# Runs the iii-console command line as the entry point does, and writes the loaded
# modules to $III_MODULES_OUT when it exits. With a Textual driver in the environment
# (the console, attached), it writes them once the app has been up for a moment instead.
WRAPPER = """
import atexit, json, os, sys, threading, time

def dump():
    with open(os.environ["III_MODULES_OUT"], "w") as fh:
        json.dump(sorted(sys.modules), fh)

def while_the_console_runs():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        app = sys.modules.get("iii_console.tui.app")
        if app is not None and "textual.drivers.headless_driver" in sys.modules:
            time.sleep(0.5)  # mounted, its reader connecting: what it loads lazily is loaded
            dump()
            os._exit(0)
        time.sleep(0.05)
    os._exit(5)

if os.environ.get("TEXTUAL_DRIVER"):
    threading.Thread(target=while_the_console_runs, daemon=True).start()
atexit.register(dump)
from iii_console.entry import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client")
    make_project(root, {})
    (root / "wrapper.py").write_text(WRAPPER)
    return root


def _start(project: Path, redis_url: str, args: list[str], **env: str) -> tuple[subprocess.Popen[str], Path]:
    out = project / f"modules-{args[0]}.json"
    out.unlink(missing_ok=True)
    full_env = cli_env(III_MODULES_OUT=str(out), **env)
    proc = subprocess.Popen(
        [sys.executable, str(project / "wrapper.py"), *args, "--redis", redis_url],
        cwd=project,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    return proc, out


def _loaded(proc: subprocess.Popen[str], out: Path, ok: tuple[int, ...] = (0,)) -> list[str]:
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode in ok, stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list"],
        ["dlq", "replay", "--all", "--yes"],
        ["state", "set", "orders", "A1", '{"qty": 2}'],
    ],
)
def test_a_client_command_runs_without_the_server_or_queue_libraries(project: Path, redis_url: str, args: list[str]) -> None:
    """Given a real Redis, when dlq or state runs against it, then it succeeds and loaded no Litestar, uvicorn or Dramatiq."""
    loaded = _loaded(*_start(project, redis_url, args))
    assert "iii_console.cli.main" in loaded  # the command really ran through the command line
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []


def test_tail_follows_the_stream_without_them(project: Path, redis_url: str, r) -> None:
    """Given an event on the stream, when tail prints it and is interrupted, then it loaded no Litestar, uvicorn or Dramatiq."""
    from iii_console.core.emitter import Emitter, StreamSink
    from iii_console.core.keys import Keys

    keys = Keys()
    sink = StreamSink(r, keys.events, maxlen=1000, keys=keys)
    Emitter(sink, worker="test", trace_id="t1").emit("log", message="hello")
    sink.close()
    proc, out = _start(project, redis_url, ["tail", "--json", "--history", "5"])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line)["type"] == "log"
    proc.send_signal(signal.SIGINT)
    loaded = _loaded(proc, out, ok=(0, 130))  # 130: the interrupt landed before it began to follow
    assert "iii_console.cli.tail" in loaded
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []


def test_the_attached_console_runs_without_them(project: Path, redis_url: str) -> None:
    """Given a real Redis, when attach opens the console on it (headless driver), then it loaded no Litestar, uvicorn or Dramatiq."""
    loaded = _loaded(*_start(project, redis_url, ["attach"], TEXTUAL_DRIVER="textual.drivers.headless_driver:HeadlessDriver"))
    assert "iii_console.tui.app" in loaded and "textual" in loaded
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []


def test_the_probe_sees_the_server_libraries_when_the_runtime_is_loaded(project: Path, redis_url: str) -> None:
    """Given send --topic (which builds the queue producer), when it runs, then the probe reports Dramatiq (so the checks above can fail)."""
    proc, out = _start(project, redis_url, ["send", "--topic", "nobody", "--data", "{}"])
    proc.communicate(timeout=60)
    assert proc.returncode == 2  # no step subscribes: a usage error, after the producer module loaded
    assert "dramatiq" in json.loads(out.read_text())
