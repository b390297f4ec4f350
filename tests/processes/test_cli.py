"""The command line as a user meets it: every mistake is one line on stderr and a
non-zero exit, `--no-ui` prints nothing but JSON lines on stdout, and SIGTERM
lets a running handler finish."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import httpx
import pytest

from iii_console.core.redis_server import free_port

from ..helpers import cli_env, cli_send, events, make_project, pid_alive, start_cli, wait_for

UNREACHABLE = "redis://127.0.0.1:1/0"


_env = cli_env


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iii_console", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    make_project(root, {}, "server:\n  port: 0\n")
    (root / "broken.yaml").write_text("server:\n  port: [\n")
    (root / "unknown.yaml").write_text("server:\n  port: 3111\nqueues:\n  message.sent:\n    concurency: 3\n")
    (root / "badurl.yaml").write_text("server:\n  port: 0\nredis:\n  url: redis://localhost:notaport/0\n")
    (root / "boolport.yaml").write_text("server:\n  port: true\n")
    (root / "three.yaml").write_text("server:\n  port: abc\nqueues:\n  q:\n    max_retries: -1\n    backoff: linear\n")
    return root


CASES = [
    # (args, extra env, exit code, text the one line must contain)
    (["--bogus"], {}, 2, "--bogus"),
    (["--role", "bogus", "--no-ui"], {}, 2, "--role"),
    (["--processes", "0", "--no-ui"], {}, 2, "--processes"),
    (["--threads", "0", "--no-ui"], {}, 2, "--threads"),
    (["--port", "70000", "--no-ui"], {}, 2, "--port"),
    (["nope"], {}, 2, "nope"),
    (["send"], {}, 2, "TEXT"),
    (["send", "hi", "--priority", "urgent"], {}, 2, "--priority"),
    (["send", "hi", "--count", "-1"], {}, 2, "--count"),
    (["send", "--topic", "message.sent", "--data", "not json"], {}, 2, "--data"),
    (["send", "--data", "{}"], {}, 2, "--topic"),
    (["send", "--topic", "message.sent", "--data", "[" * 5000 + "]" * 5000], {}, 2, "nested too deeply"),
    (["send", "--topic", "message.sent", "--data", "[" * 40000 + "]" * 40000], {}, 2, "nested too deeply"),
    (["state", "set", "g", "k", '{"a":' * 5000 + "1" + "}" * 5000], {}, 2, "nested too deeply"),
    (["state", "set", "g", "k", "[" * 40000 + "]" * 40000], {}, 2, "nested too deeply"),
    (["tail", "--type", "bogus"], {}, 2, "--type"),
    (["dlq", "replay"], {}, 2, "--all"),
    (["dlq", "list", "--since", "bogus", "--redis", UNREACHABLE], {}, 2, "--since"),
    # Unreachable Redis, for every command that talks to it.
    (["--no-ui", "--redis", UNREACHABLE], {}, 3, "cannot reach Redis"),
    (["send", "--topic", "message.sent", "--data", "{}", "--redis", UNREACHABLE], {}, 3, "cannot reach Redis"),
    (["tail", "--redis", UNREACHABLE], {}, 3, "cannot reach Redis"),
    (["attach", "--redis", UNREACHABLE], {}, 3, "cannot reach Redis"),
    (["attach"], {}, 3, "start `iii-console` in this project first, or pass --redis URL"),
    (["dlq", "list", "--redis", UNREACHABLE], {}, 3, "cannot reach Redis"),
    (["state", "groups", "--redis", UNREACHABLE], {}, 3, "cannot reach Redis"),
    (["tail"], {"REDIS_URL": UNREACHABLE}, 3, "cannot reach Redis"),
    # Not a Redis URL at all, from the flag, the environment or the file.
    (["--no-ui", "--redis", "http://x"], {}, 2, "redis://, rediss:// or unix://"),
    (["--no-ui", "--redis", "redis://localhost:notaport"], {}, 2, "notaport"),
    (["--no-ui", "--redis", "redis://localhost:6379/abc"], {}, 2, "database"),
    # The value is not repeated (it may come from an environment variable): only its scheme.
    (["--no-ui", "--redis", "http://user:hunter2@x"], {}, 2, "the scheme 'http://'"),
    (["send", "--topic", "message.sent", "--data", "{}", "--redis", "http://x"], {}, 2, "--redis"),
    (["send", "hi", "--redis", "http://x"], {}, 2, "--redis"),
    (["tail", "--redis", "http://x"], {}, 2, "--redis"),
    (["attach", "--redis", "http://x"], {}, 2, "--redis"),
    (["dlq", "list", "--redis", "http://x"], {}, 2, "--redis"),
    (["state", "groups", "--redis", "http://x"], {}, 2, "--redis"),
    (["steps", "--redis", "http://x"], {}, 2, "--redis"),
    (["config", "check", "--redis", "http://x"], {}, 2, "--redis"),
    (["tail"], {"REDIS_URL": "garbage"}, 2, "REDIS_URL"),
    (["--no-ui", "--config", "badurl.yaml"], {}, 2, "badurl.yaml:4: redis.url"),
    # Config files: missing, unparsable, unknown key; each named with its line and key.
    (["--no-ui", "--config", "missing.yaml"], {}, 2, "missing.yaml: file not found"),
    (["--no-ui", "--config", "broken.yaml"], {}, 2, "broken.yaml:3: invalid YAML"),
    (["--no-ui", "--config", "unknown.yaml"], {}, 2, "unknown.yaml:5: queues.message.sent.concurency: unknown key"),
    (["send", "hi", "--config", "unknown.yaml"], {}, 2, "unknown.yaml:5"),
    (["tail", "--config", "missing.yaml"], {}, 2, "missing.yaml"),
    (["dlq", "list", "--config", "broken.yaml"], {}, 2, "broken.yaml:3"),
    (["steps", "--config", "missing.yaml"], {}, 2, "missing.yaml"),
    (["config", "check", "--config", "missing.yaml"], {}, 2, "missing.yaml"),
    (["--no-ui"], {"III_CONFIG": "unknown.yaml"}, 2, "unknown.yaml:5"),
    (["--no-ui", "--config", "boolport.yaml"], {}, 2, "boolport.yaml:2: server.port: a number is needed here, not true"),
    # --config and --redis before a command are that command's (the command's own win); run-only flags are refused.
    (["--config", "missing.yaml", "config", "check"], {}, 2, "missing.yaml: file not found"),
    (["--config", "missing.yaml", "steps"], {}, 2, "missing.yaml"),
    (["--config", "missing.yaml", "dlq", "list"], {}, 2, "missing.yaml"),
    (["--config", "missing.yaml", "steps", "--config", "unknown.yaml"], {}, 2, "unknown.yaml:5"),
    (["--config", "missing.yaml", "tail"], {"III_CONFIG": "unknown.yaml"}, 2, "missing.yaml"),
    (["--redis", UNREACHABLE, "state", "groups"], {}, 3, "cannot reach Redis"),
    (["--redis", "http://x", "tail"], {}, 2, "--redis"),
    (["--port", "4000", "steps"], {}, 2, "--port: only for running the project"),
    (["--no-ui", "--role", "worker", "dlq", "list"], {}, 2, "--no-ui, --role: only for running the project"),
    # `send TEXT` with no server to post to, or no way to know where it listens.
    # (FREE_PORT is a free port picked when the test runs: test ids stay the same in every process.)
    (["send", "hi", "--url", "http://127.0.0.1:FREE_PORT"], {}, 1, "no iii-console server"),
    (["send", "hi"], {}, 2, "server.port is 0"),
    (["send", "hi", "--url", "http://[::1"], {}, 1, "not a URL to send to"),
    (["send", "--path", "/x", "--data", "{}", "--url", "http://[::1"], {}, 1, "not a URL to send to"),
    (["send", "hi", "--url", "http://127.0.0.1:FREE_PORT"], {"III_AUTH_TOKEN": "tökén"}, 1, "printable ASCII"),
]


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    CASES,
    ids=[(" ".join(c[0]) + "".join(f" {k}={v}" for k, v in c[1].items()))[:100] for c in CASES],
)
def test_mistakes_are_one_line_on_stderr_and_a_non_zero_exit(project, args, env, code, needle):
    args = [a.replace("FREE_PORT", str(free_port())) for a in args]
    res = _run(project, *args, **env)
    lines = res.stderr.splitlines()
    assert res.returncode == code, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert needle in lines[0], lines[0]
    assert res.stdout == "" and "hunter2" not in res.stderr


def test_config_check_reports_a_broken_file_as_a_finding(project):
    res = _run(project, "config", "check", "--config", "unknown.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stdout.strip() == "unknown.yaml:5: queues.message.sent.concurency: unknown key"
    # Every problem of the file, each with its line and key (a start names the first only).
    res = _run(project, "config", "check", "--config", "three.yaml")
    assert res.returncode == 2 and "3 problems in the configuration" in res.stderr
    assert [ln.split(": ")[0:2] for ln in res.stdout.splitlines()] == [
        ["three.yaml:2", "server.port"],
        ["three.yaml:5", "queues.q.max_retries"],
        ["three.yaml:6", "queues.q.backoff"],
    ]


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    for name, cmd in group.commands.items():
        out += _commands(cmd, (*path, name)) if isinstance(cmd, click.Group) else [((*path, name), cmd)]
    return out


def test_every_command_takes_redis_and_config_and_has_help(project):
    from iii_console.cli import cli

    commands = _commands(cli)
    assert len(commands) > 15
    for path, cmd in commands:
        if isinstance(cmd, click.Group) and path:
            continue  # a group only dispatches
        if list(path) == ["new"]:
            continue  # writes files only: no Redis, no project yet
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--redis", "--config"} <= opts, f"iii-console {' '.join(path)} lacks --redis/--config"
    from click.testing import CliRunner

    for path, _cmd in commands:
        res = CliRunner().invoke(cli, [*path, "--help"], prog_name="iii-console")
        assert res.exit_code == 0 and res.output.startswith("Usage: iii-console"), (path, res.output)


# -- headless runs ----------------------------------------------------------------

LOUD = """
import logging
from iii_console import Step, http
config = Step(name="Loud", triggers=[http("GET", "/loud")])
def handler(req, ctx):
    print("print from an HTTP handler")
    logging.getLogger("somelib").warning("a library warning")
    return {"status": 200, "body": {"ok": True}}
"""

GATED = """
import os, time
from iii_console import Step, queue
config = Step(name="Gated", triggers=[queue("gated")])
def handler(data, ctx):
    print("print from a queue handler")
    ctx.state.set("gated", data["k"], {"status": "running"})
    while not os.path.exists(data["gate"]):
        time.sleep(0.02)
    ctx.state.set("gated", data["k"], {"status": "done"})
"""


def test_no_ui_stdout_is_only_json_and_sigterm_lets_a_running_handler_finish(tmp_path, redis_url, r, keys):
    make_project(tmp_path, {"loud_step.py": LOUD, "gated_step.py": GATED}, "server:\n  port: 0\n", redis_url=redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err: list[str] = []
    out: list[str] = []
    banner = proc.stderr.readline()
    assert "running" in banner, banner + proc.stderr.read()
    readers = [
        threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True),
        threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True),
    ]
    for t in readers:
        t.start()
    gate = tmp_path / "gate"
    try:
        url = banner.split(" on ")[1].split(" ")[0]
        assert httpx.get(f"{url}/loud").json() == {"ok": True}
        sent = _run(
            tmp_path,
            "send",
            "--topic",
            "gated",
            "--data",
            json.dumps({"k": "a", "gate": str(gate)}),
            "--json",
            "--redis",
            redis_url,
        )
        assert sent.returncode == 0, sent.stderr
        message_id = json.loads(sent.stdout)["message_ids"][0]
        wait_for(
            lambda: json.loads(r.hget(keys.state_group("gated"), "a") or "{}").get("status") == "running",
            what="the handler to start",
        )
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: any("stopping" in line for line in err), what="the stop to begin")
        assert proc.poll() is None  # waiting for the running handler, which waits for the gate
        gate.touch()
        assert proc.wait(60) == 0
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(r.hget(keys.state_group("gated"), "a"))["status"] == "done"
    for t in readers:
        t.join(30)  # both pipes are at EOF once the process and its workers are gone
    events = [json.loads(line) for line in out]  # every line is one JSON object
    assert all(isinstance(e, dict) and "type" in e for e in events)
    assert any(e["type"] == "message.processed" and e.get("message_id") == message_id for e in events)
    stderr = "".join(err)
    assert "print from an HTTP handler" in stderr and "print from a queue handler" in stderr and "a library warning" in stderr


def test_send_json_prints_one_object_per_message(running, seed_project, redis_url):
    app = running()
    res = _run(seed_project, "send", "hello", "--priority", "high", "--count", "3", "--json", "--url", app.url)
    assert res.returncode == 0, res.stderr
    sent = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(sent) == 3 and all(s["status"] == "queued" and s["id"] and s["trace_id"] for s in sent)
    res = _run(
        seed_project,
        "send",
        "--topic",
        "message.sent",
        "--data",
        '{"id": "d1", "text": "hi"}',
        "--count",
        "2",
        "--json",
        "--redis",
        redis_url,
    )
    assert res.returncode == 0, res.stderr
    direct = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(direct) == 2 and all(d["topic"] == "message.sent" and len(d["message_ids"]) == 1 for d in direct)
    res = _run(seed_project, "send", "plain", "--url", app.url)
    assert res.returncode == 0 and res.stderr.strip() == "sent 1 message"
    assert res.stdout.count("\n") == 1 and len(res.stdout.strip()) == 32  # the id it got (a uuid hex), alone


@pytest.mark.parametrize("delay", [0.2, 0.4, 0.7, 1.2])
def test_ctrl_c_at_any_moment_of_start_up_exits_quietly(tmp_path, redis_url, delay):
    """Given `--no-ui` starting (still importing, connecting, or already running), when Ctrl+C arrives,
    then it exits 130 (nothing had started) or 0 (drained), and stderr holds no traceback."""
    import time

    make_project(tmp_path, {}, "server:\n  port: 0\n", redis_url=redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    if "init_import_site" in err:  # a loaded machine: it landed in the interpreter's own start, before any of ours
        pytest.skip("the signal arrived while Python itself was starting")
    assert proc.returncode in (0, 130, -signal.SIGINT), err  # a shell shows death by SIGINT as 130 too
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


LONE = """
from iii_console import Step, queue
config = Step(name="Lone", triggers=[queue("lone")])
def handler(data, ctx):
    ctx.logger.info(f"got {data['x']}")
    raise ValueError(f"bad value {data['x']}")
"""


def test_a_lone_surrogate_in_a_dead_letter_an_event_or_a_state_value_is_printed_escaped(tmp_path, redis_url):
    """Given a dead letter, a log event and a state value holding a lone surrogate (the valid JSON escape
    ``\\ud800``), when `dlq list`, `dlq show`, `tail` and `state get`/`list` print them for a person, then each
    exits 0 and shows the escape, with no traceback."""
    make_project(
        tmp_path, {"lone_step.py": LONE}, "server:\n  port: 0\nqueues:\n  lone:\n    max_retries: 0\n", redis_url=redis_url
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        cli_send(tmp_path, "lone", {"x": "A\ud800B"})
        wait_for(lambda: _run(tmp_path, "dlq", "list", "--json").stdout.strip(), timeout=30, what="the dead letter")
    finally:
        run.stop()
    entry = json.loads(_run(tmp_path, "dlq", "list", "--json").stdout.splitlines()[0])
    assert _run(tmp_path, "state", "set", "g", "k", '"C\\ud800D"').returncode == 0
    for args, shown in (
        (("dlq", "list"), "A\\ud800B"),
        (("dlq", "show", entry["id"]), "A\\ud800B"),
        (("state", "get", "g", "k"), "C\\ud800D"),
        (("state", "list", "g"), "C\\ud800D"),
    ):
        res = _run(tmp_path, *args)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (args, res.stderr)
        assert shown in res.stdout, (args, res.stdout)
    # `tail` follows: its reader takes lines until the escaped one, then goes away (`| head`); the next event ends it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "tail", "--history", "50"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    seen = False
    try:
        for line in iter(proc.stdout.readline, ""):  # type: ignore[union-attr]
            if "got A\\ud800B" in line:
                seen = True
                break
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
    assert seen
    for _ in range(100):
        if proc.poll() is not None:
            break
        _run(tmp_path, "state", "set", "g", "tick", "1")  # an event to print into the closed pipe
    code = proc.wait(10)
    err = proc.stderr.read()  # type: ignore[union-attr]
    assert code == 0 and "Traceback" not in err, (code, err)


SLOW_IMPORT = """
import time
time.sleep(60)  # module code that takes long: a model loaded, a large library
config = {"name": "Slow", "triggers": [{"type": "queue", "topic": "slow"}]}
def handler(data, ctx):
    pass
"""


def test_a_slow_step_import_is_named_and_a_first_ctrl_c_stops_it_at_once(tmp_path):
    """Given a step file whose module code takes a minute and no Redis configured, when `--no-ui` starts with its
    stderr on a terminal, then stderr names the file it is importing within seconds; a first Ctrl+C then exits 130
    at once with no traceback, and the project's Redis stops with it. (Piped, stderr's first line stays the banner.)"""
    import os
    import pty

    make_project(tmp_path, {"slow_step.py": SLOW_IMPORT}, "server:\n  port: 0\n")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=slave,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal's other end closed: the process is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    said = lambda: b"".join(chunks).decode(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: "importing steps/slow_step.py" in said(), timeout=30, what="the slow file named")
        assert "iii-console: importing steps/slow_step.py (1 s so far;" in said() and "Ctrl+C stops" in said(), said()
        redis_pid = json.loads((tmp_path / ".iii" / "redis.json").read_text())["redis_pid"]
        assert pid_alive(redis_pid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    os.close(master)
    out = said()
    assert code == 130 and took < 10, (code, took, out)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "imported steps/" not in out, out
    wait_for(lambda: not pid_alive(redis_pid), timeout=15, what="the project's Redis to stop")


def test_piped_stderr_starts_with_the_banner_even_after_a_slow_import(tmp_path, redis_url):
    """Given a step file whose import takes 1.5 s, when `--no-ui` starts with stderr piped (a supervisor, the pytest
    plugin), then stderr's first line is still the banner."""
    make_project(
        tmp_path,
        {"slow_step.py": SLOW_IMPORT.replace("time.sleep(60)", "time.sleep(1.5)")},
        "server:\n  port: 0\n",
        redis_url=redis_url,
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "server")  # asserts the first line is the banner
    try:
        assert not any("importing" in line for line in run.lines)
    finally:
        run.stop()


def test_steps_import_the_projects_own_packages_from_wherever_the_command_runs(tmp_path):
    """Given a step that imports ``lib.money`` from the project's root, when `config check` and `steps` run from
    another directory (where ``python -m`` puts nothing of the project on the path), then the step loads; a module
    of the project named like a standard one (``email.py``) does not shadow it."""
    proj = tmp_path / "proj"
    make_project(proj, {}, "server:\n  port: 0\n")
    (proj / "lib").mkdir()
    (proj / "lib" / "__init__.py").write_text("")
    (proj / "lib" / "money.py").write_text("def cents(x):\n    return round(x * 100)\n")
    (proj / "email.py").write_text("raise RuntimeError('the project shadowed the standard library')\n")
    (proj / "steps" / "pay_step.py").write_text(
        "import email.message\n"
        "from lib.money import cents\n"
        "from iii_console import Step, queue\n"
        "config = Step(name='Pay', triggers=[queue('pay')])\n"
        "def handler(data, ctx):\n"
        "    return cents(data['eur'])\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checked = _run(elsewhere, "config", "check", "--config", str(proj / "iii-config.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = _run(elsewhere, "steps", "--json", "--config", str(proj / "iii-config.yaml"))
    assert listed.returncode == 0 and "Pay" in listed.stdout, listed.stderr


def test_a_second_run_on_a_port_in_use_stops_before_it_starts_anything(tmp_path, redis_url, r, keys):
    """Given `iii-console --no-ui` running, when a second one starts in the same project (same port), then it exits
    naming the port and `attach` before it starts a worker or writes anything: the first one's stream gets no worker
    of its (reported crashed when it stopped)."""
    port = free_port()
    make_project(tmp_path, {}, f"server:\n  port: {port}\n", redis_url=redis_url)
    first = start_cli(tmp_path, "--no-ui")
    try:
        wait_for(lambda: events(r, keys, "worker.started"), timeout=30, what="the first run's worker")
        seen = len(r.xrange(keys.events))
        second = _run(tmp_path, "--no-ui")
        assert second.returncode != 0 and "address already in use" in second.stderr and "attach" in second.stderr
        time.sleep(1)
        later = [e.type for e in events(r, keys)[seen:] if e.type.startswith("worker.") and e.type != "worker.heartbeat"]
        assert later == [], later
    finally:
        assert first.stop() == 0


def test_steps_import_modules_beside_them_relatively(tmp_path):
    """Given step files that import with relative imports (a helper beside a top-level step, one beside a step in a
    folder with an __init__.py, a name from that __init__), when `config check` runs, then every step loads."""
    make_project(tmp_path, {}, "server:\n  port: 0\n")
    steps = tmp_path / "steps"
    (steps / "helpers.py").write_text("def x():\n    return 1\n")
    (steps / "top_step.py").write_text(
        "from .helpers import x\nfrom iii_console import Step, queue\n"
        "config = Step(name='Top', triggers=[queue('top')])\ndef handler(d, ctx):\n    return x()\n"
    )
    (steps / "orders").mkdir()
    (steps / "orders" / "__init__.py").write_text("SHARED = 'orders'\n")
    (steps / "orders" / "helpers.py").write_text("def y():\n    return 2\n")
    (steps / "orders" / "place_step.py").write_text(
        "from . import SHARED\nfrom .helpers import y\nfrom iii_console import Step, queue\n"
        "config = Step(name='Place', triggers=[queue(SHARED)])\ndef handler(d, ctx):\n    return y()\n"
    )
    checked = _run(tmp_path, "config", "check")
    assert checked.returncode == 0 and "2 steps, 0 problems" in checked.stderr, checked.stdout + checked.stderr


def test_a_group_without_its_subcommand_prints_its_help_and_an_empty_name_is_a_usage_error(tmp_path):
    """Given `dlq` with no subcommand, then its help is printed as it reads (one command a line), exit 2; given
    an empty state group or key, then it is a usage error naming the argument (exit 2), before Redis is asked."""
    for group in ("dlq", "state", "cron"):
        res = _run(tmp_path, group)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.startswith(f"Usage: iii-console {group} ") and "\nCommands:\n" in res.stderr, res.stderr
    for args, name in ((("state", "set", "", "k", "1"), "GROUP"), (("state", "get", "g", ""), "KEY")):
        res = _run(tmp_path, *args, "--redis", UNREACHABLE)
        assert res.returncode == 2 and f"Invalid value for {name}: must not be empty" in res.stderr, res.stderr


def test_send_to_a_cron_or_state_steps_own_topic_is_refused_naming_the_command_to_use(tmp_path):
    """Given `send --topic _cron.STEP` or `_state.STEP` (whose handlers take a tick or a change, not free data), then
    it is a usage error naming `cron run` or `state set`, before anything is enqueued."""
    for topic, how in (("_cron.Nightly", "iii-console cron run STEP"), ("_state.Watch", "iii-console state set")):
        res = _run(tmp_path, "send", "--topic", topic, "--data", "{}", "--redis", UNREACHABLE)
        assert res.returncode == 2 and how in res.stderr and "--topic" in res.stderr, res.stderr
