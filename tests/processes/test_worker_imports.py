"""A queue worker process loads no server, console or config-file stack (each costs resident memory in every worker).

A real worker process (``python -m iii_console.runtime.worker``, as the supervisor starts it)
runs a step that writes the process's ``sys.modules`` to a file, after a first message has
been run, logged from and acknowledged, so what the message path loads lazily is counted too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..helpers import events_once, wait_for

#: Top-level packages a worker on Redis never needs: the HTTP server stack, the console and
#: what it draws with, structlog's chain (the emitter builds events directly), PyYAML (the
#: configuration comes as JSON), RabbitMQ's client.
NOT_IN_A_WORKER = ("litestar", "uvicorn", "httptools", "uvloop", "textual", "rich", "pygments", "structlog", "yaml", "pika")
#: Our modules a worker never needs: the server, the console, span export when telemetry is off, the CLI.
OURS_NOT_IN_A_WORKER = (
    "iii_console.adapters.server",
    "iii_console.adapters.telemetry.otel",  # the package itself only decides that tracing is off
    "iii_console.adapters.telemetry.queue",
    "iii_console.tui",
    "iii_console.cli",
    "iii_console.runtime.supervisor",
    "iii_console.runtime.http_server",
)

PROBE = """
import importlib
import json
import os
import sys

from iii_console import Step, queue

config = Step(name="Probe", triggers=[queue("probe")])


def handler(data, ctx):
    ctx.logger.info("probing", n=data["n"])
    if data.get("load"):
        importlib.import_module(data["load"])
    if data.get("out"):  # whole or not at all: the test reads it as soon as it exists
        with open(data["out"] + ".part", "w") as fh:
            json.dump(sorted(sys.modules), fh)
        os.replace(data["out"] + ".part", data["out"])
"""


def _loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_a_worker_process_loads_no_server_console_or_yaml_stack(project, producer, r, keys, tmp_path: Path):
    """Given a real worker process that has run, logged from and acknowledged a message, when a second message
    records its sys.modules, then no HTTP server, console, structlog, YAML or RabbitMQ module is among them; and
    when a third message imports PyYAML, a fourth sees it (the probe can fail)."""
    cfg, steps = project({"probe_step.py": PROBE})
    env = dict(os.environ, III_CONFIG_JSON=cfg.model_dump_json(), III_WORKER_INDEX="0", III_WORKER_THREADS="2")
    worker = subprocess.Popen(
        [sys.executable, "-m", "iii_console.runtime.worker"],
        env=env,
        cwd=cfg.project_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: r.hlen(keys.workers) == 1, what="the worker registered")
        send = producer(cfg, steps).enqueue
        send("probe", {"n": 1}, trace_id="t1")
        events_once(r, keys, "message.processed", 1)
        first, second = tmp_path / "modules-1.json", tmp_path / "modules-2.json"
        send("probe", {"n": 2, "out": str(first)}, trace_id="t2")
        wait_for(first.exists, what="the worker's modules")
        send("probe", {"n": 3, "load": "yaml"}, trace_id="t3")
        events_once(r, keys, "message.processed", 3)
        send("probe", {"n": 4, "out": str(second)}, trace_id="t4")
        wait_for(second.exists, what="the worker's modules after an import")
        modules = json.loads(first.read_text())
        assert "iii_console.runtime.runner" in modules and "dramatiq" in modules  # it is a worker's list
        assert _loaded(modules, NOT_IN_A_WORKER) == []
        assert _loaded(modules, OURS_NOT_IN_A_WORKER) == []
        assert "yaml" in json.loads(second.read_text())
        lines = events_once(r, keys, "log", 4, where=lambda e: e.data.get("message") == "probing")
        assert sorted(e.data["n"] for e in lines) == [1, 2, 3, 4]  # the step's lines took the direct path
    finally:
        worker.terminate()
        _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
