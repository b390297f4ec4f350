"""End to end through the CLI: a real server on a real port, real worker and
scheduler processes, real Redis."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from iii_console.core.dlq import DeadLetterStore
from iii_console.core.events import Event

from ..helpers import ROOT, Running, events, events_once, make_project, pid_alive, start_cli, wait_for

pytestmark = pytest.mark.slow


def test_posted_message_is_processed_and_notified_on_one_trace(running, r, keys):
    app = running()
    resp = httpx.post(f"{app.url}/messages", json={"text": "hello world", "recipient": "ada@example.com"})
    assert resp.status_code == 202
    body = resp.json()
    trace = body["trace_id"]
    assert resp.headers["x-trace-id"] == trace and body["status"] == "queued"
    wait_for(lambda: events(r, keys, "notification.sent"), what="notification")
    got = [e.type for e in events(r, keys) if e.trace_id == trace]
    for t in ("http.received", "message.enqueued", "message.started", "message.processed", "state.changed", "notification.sent"):
        assert t in got, (t, got)
    record = json.loads(r.hget(keys.state_group("messages"), body["id"]))
    assert record["status"] == "processed" and record["result"] == {"length": 11, "words": 2}
    [note] = events(r, keys, "notification.sent")
    assert note.data["recipient"] == "ada@example.com" and note.data["message_id"] == body["id"]


def test_failing_message_retried_max_retries_times_then_dead_lettered_with_traceback(running, r, keys):
    """max_retries 2, retry_delay 300 ms, exponential: attempts 1-3, at least 300 then 600 ms apart, then the DLQ."""
    from iii_console.core.queues import queue_stats

    app = running()
    resp = httpx.post(f"{app.url}/messages", json={"text": "doomed", "fail_times": 99})
    mid, trace = resp.json()["id"], resp.json()["trace_id"]
    store = DeadLetterStore(r, keys)
    [dead] = events_once(r, keys, "message.dead_lettered", 1, timeout=20)
    mine = [e for e in events(r, keys) if e.trace_id == trace and e.step == "ProcessMessage"]
    started = [e for e in mine if e.type == "message.started"]
    retrying = [e for e in mine if e.type == "message.retrying"]
    failed = [e for e in mine if e.type == "message.failed"]
    assert [e.attempt for e in started] == [1, 2, 3]
    assert [e.attempt for e in failed] == [1, 2, 3] and all("Traceback" in e.data["traceback"] for e in failed)
    assert [(e.attempt, e.data["delay_ms"]) for e in retrying] == [(2, 300), (3, 600)]  # exactly max_retries retries
    assert (dead.attempt, dead.data, dead.trace_id) == (3, {"dlq": "message.sent.dlq", "attempts": 3}, trace)
    assert len({e.message_id for e in mine if e.message_id}) == 1  # a retry is the same message, not a new one
    # Each retry ran no earlier than its delay after it was scheduled (one host's clock stamps both).
    assert started[1].ts - retrying[0].ts >= 300 and started[2].ts - retrying[1].ts >= 600
    [entry] = store.list("message.sent.dlq")
    assert entry.attempts == 3 and entry.data["id"] == mid and entry.trace_id == trace and entry.step == "ProcessMessage"
    assert entry.error == "RuntimeError: simulated failure on attempt 3"
    assert entry.traceback.startswith("Traceback") and "process_message_step.py" in entry.traceback
    assert entry.traceback.rstrip().endswith("RuntimeError: simulated failure on attempt 3")
    assert entry.first_failure_ms < entry.last_failure_ms
    stat = queue_stats(r, keys, ["message.sent"])["message.sent"]
    assert (stat.waiting, stat.delayed, stat.in_flight) == (0, 0, 0)  # no fourth attempt is pending anywhere
    record = json.loads(r.hget(keys.state_group("messages"), mid))
    assert record["status"] == "failed" and record["attempts"] == 3
    assert not events(r, keys, "notification.sent")


def test_state_change_made_from_the_cli_triggers_the_state_step_once(running, seed_project, r, keys):
    """A state change from outside any step (`iii-console state set`) reaches a real worker's state trigger."""
    app = running()
    wait_for(lambda: events(r, keys, "worker.started"), what="worker started")

    def state_set(key: str, value: dict) -> None:
        res = subprocess.run(
            [sys.executable, "-m", "iii_console", "state", "set", "messages", key, json.dumps(value)],
            cwd=seed_project,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr

    state_set("m-queued", {"id": "m-queued", "status": "queued", "recipient": "q@example.com"})  # condition false
    state_set("m-done", {"id": "m-done", "status": "processed", "recipient": "d@example.com", "result": {"words": 4}})
    [note] = events_once(r, keys, "notification.sent", 1)
    assert note.data["message_id"] == "m-done" and note.data["recipient"] == "d@example.com"
    [change] = [e for e in events(r, keys, "state.changed") if e.data["key"] == "m-done"]
    assert change.step == "cli" and len(change.trace_id) == 32  # a command is a trace of its own ...
    assert note.trace_id == change.trace_id  # ... followed into the step it triggered
    state_set("m-done", {"id": "m-done", "status": "processed", "recipient": "d@example.com", "result": {"words": 5}})
    # That write changed the value but not the status, so the condition is false. A message sent afterwards is
    # dispatched after it by the same worker, whose events reach the stream in order: once that message's
    # notification is there, a wrongly triggered run would show as a third NotifyCompletion enqueue.
    httpx.post(f"{app.url}/messages", json={"text": "a marker after the CLI writes"})
    events_once(r, keys, "notification.sent", 2)
    assert len([e for e in events(r, keys, "message.enqueued") if e.step == "NotifyCompletion"]) == 2
    assert events(r, keys, "notification.sent")[0].data["message_id"] == "m-done"


JSON = {"content-type": "application/json"}

#: (what, request kwargs, status, text the answer must hold). Schema violations name the field.
BAD_REQUESTS = [
    ("missing field", {"json": {"txt": "x"}}, 400, '"field":"text"'),
    ("empty string", {"json": {"text": ""}}, 400, '"field":"text"'),
    ("wrong type", {"json": {"text": 123}}, 400, '"field":"text"'),
    ("null field", {"json": {"text": None}}, 400, '"field":"text"'),
    ("wrong type, second field", {"json": {"text": "x", "fail_times": "many"}}, 400, '"field":"fail_times"'),
    ("not a literal", {"json": {"text": "x", "priority": "urgent"}}, 400, '"field":"priority"'),
    ("misspelt field", {"json": {"text": "x", "prority": "high"}}, 400, '"field":"prority"'),
    ("boolean for a count", {"json": {"text": "x", "fail_times": True}}, 400, '"field":"fail_times"'),
    ("NaN", {"content": b'{"text": "x", "fail_times": NaN}', "headers": JSON}, 400, '"detail":"NaN is not a JSON number"'),
    ("array instead of object", {"json": [{"text": "x"}]}, 400, '"field":"(body)"'),
    ("null body", {"content": b"null", "headers": JSON}, 400, '"field":"(body)"'),
    ("empty body", {"content": b"", "headers": JSON}, 400, "required"),
    ("invalid JSON", {"content": b'{"text": "x"', "headers": JSON}, 400, "not valid JSON"),
    ("trailing garbage", {"content": b'{"text": "x"} x', "headers": JSON}, 400, "not valid JSON"),
    ("BOM", {"content": b'\xef\xbb\xbf{"text": "x"}', "headers": JSON}, 400, "not valid JSON"),
    (
        "5,000-digit integer",
        {"content": b'{"text": "x", "fail_times": ' + b"9" * 5000 + b"}", "headers": JSON},
        400,
        "not valid JSON",
    ),
    ("invalid UTF-8", {"content": b'{"text": "\xc3\x28"}', "headers": JSON}, 400, "UTF-8"),
    ("UTF-16", {"content": '{"text": "x"}'.encode("utf-16"), "headers": JSON}, 400, "UTF-8"),
    ("nested arrays", {"content": b"[" * 50_000 + b"]" * 50_000, "headers": JSON}, 400, "nested"),
    ("nested objects", {"content": b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "headers": JSON}, 400, "nested"),
    (
        "nested inside a field",
        {"content": b'{"text": "x", "recipient": ' + b"[" * 5000 + b"]" * 5000 + b"}", "headers": JSON},
        400,
        "nested",
    ),
    ("text/plain", {"content": b'{"text": "x"}', "headers": {"content-type": "text/plain"}}, 415, "application/json"),
    ("no content-type", {"content": b'{"text": "x"}'}, 415, "application/json"),
    ("form", {"data": {"text": "x"}}, 415, "application/json"),
    ("too large", {"content": b"{}" + b" " * 2_000_000, "headers": JSON}, 413, "too large"),
]


def test_bad_requests_get_a_clear_4xx_naming_the_problem_and_write_nothing(running, r, keys):
    app = running("--role", "server")
    wrong = []
    for what, kwargs, status, needle in BAD_REQUESTS:
        resp = httpx.post(f"{app.url}/messages", **kwargs)
        if resp.status_code != status or needle not in (resp.text + resp.text.replace(" ", "")):
            wrong.append((what, resp.status_code, resp.text[:200]))
        assert r.hlen(keys.state_group("messages")) == 0, what
    assert not wrong, wrong
    # A good request afterwards: once its event is on the stream, any event of the rejected ones would be too.
    good = httpx.post(f"{app.url}/messages", json={"text": "fine"}).json()
    [received] = events_once(r, keys, "http.received", 1)
    assert received.trace_id == good["trace_id"]
    assert [e.trace_id for e in events(r, keys, "message.enqueued")] == [good["trace_id"]]


def test_unknown_path_and_method_are_404_and_405(running):
    app = running()
    assert httpx.post(f"{app.url}/nope", json={}).status_code == 404
    assert httpx.get(f"{app.url}/messages").status_code == 405


def test_sigterm_exits_zero_after_draining(running, r, keys):
    app = running()
    ids = [httpx.post(f"{app.url}/messages", json={"text": f"m{i}"}).json()["id"] for i in range(20)]
    # Stop once the worker runs (a worker stopped while still importing never starts, so has nothing to drain).
    wait_for(lambda: events(r, keys, "worker.started"), what="worker started")
    assert app.stop() == 0
    statuses = [json.loads(r.hget(keys.state_group("messages"), i))["status"] for i in ids]
    queued = sum(
        r.llen(k)
        for k in r.scan_iter(match=f"{keys.dramatiq_namespace}:message.sent--*")
        if r.type(k) == b"list" and not k.endswith(b".wake")
    )
    # Every accepted message is either done or still waiting in its queue: nothing lost, nothing half-done.
    assert statuses.count("processed") + queued == 20 and "processing" not in statuses
    app.proc.out.seek(0)
    lines = [json.loads(line) for line in app.proc.out.read().splitlines()]
    assert {"http.received", "message.processed", "worker.started", "worker.stopped"} <= {e["type"] for e in lines}


def test_broken_step_is_reported_with_file_and_field_and_the_rest_run(seed_project, r, keys):
    (seed_project / "steps" / "broken_step.py").write_text(
        "from iii_console import Step, queue\nconfig = {'name': 'Broken', 'triggers': [{'type': 'queue', 'topic': 'x', 'colour': 1}]}\ndef handler(d, ctx): pass\n"
    )
    (seed_project / "steps" / "typo_step.py").write_text("import nothing_here\n")
    run = start_cli(seed_project, "--no-ui", "--processes", "2", "--threads", "3")
    try:
        err_lines = wait_for(lambda: len(run.lines) >= 2 and run.lines[:2], what="two step error lines")
        assert any("broken_step.py" in line and "step 'Broken'" in line and "triggers.0.colour" in line for line in err_lines), (
            err_lines
        )
        assert any("typo_step.py:1" in line and "nothing_here" in line for line in err_lines), err_lines
        errors = wait_for(
            lambda: len(events(r, keys, "step.error")) == 2 and events(r, keys, "step.error"), what="step.error events"
        )
        assert {e.data["file"].rsplit("/", 1)[1] for e in errors} == {"broken_step.py", "typo_step.py"}
        resp = httpx.post(f"{run.url}/messages", json={"text": "still works"})
        wait_for(lambda: events(r, keys, "notification.sent"), what="the good steps still run")
        started = wait_for(
            lambda: len(events(r, keys, "worker.started")) == 2 and events(r, keys, "worker.started"), what="two worker processes"
        )
        assert len({e.data["pid"] for e in started}) == 2
        assert all(e.data["queues"]["message.sent"] == 3 for e in started)  # min(concurrency 4, --threads 3)
        assert resp.status_code == 202
    finally:
        assert run.stop() == 0


def test_cli_errors_are_one_clear_line_and_non_zero(tmp_path):
    from iii_console.core.redis_server import free_port

    make_project(tmp_path, {}, "")
    env = dict(os.environ)
    env.pop("REDIS_URL", None)

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "iii_console", *a], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
        )

    res = run("tail", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert res.returncode == 3 and res.stderr.startswith("error: cannot reach Redis") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run("send", "--topic", "x", "--data", "{not json", "--redis", "redis://127.0.0.1:1/0")
    assert res.returncode == 2 and "--data" in res.stderr and "Traceback" not in res.stderr
    res = run("--processes", "0")
    assert res.returncode == 2 and "--processes" in res.stderr
    res = run("send", "hi", "--url", f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 1 and "no iii-console server" in res.stderr
    (tmp_path / "iii-config.yaml").write_text("queues:\n  default:\n    max_retrys: 3\n")
    res = run("--no-ui")
    assert res.returncode == 2 and "iii-config.yaml:3: queues.default.max_retrys: unknown key" in res.stderr


class Lines:
    """A subprocess's stdout as a queue of lines, read by a thread.

    ``select()`` on the pipe and ``readline()`` on its buffered wrapper do not mix:
    lines that arrived in one burst sit in Python's buffer, where ``select`` never
    sees them, and the reader waits for data it already has.
    """

    def __init__(self, proc: subprocess.Popen):
        import queue

        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._q.put(line) for line in iter(proc.stdout.readline, "")], daemon=True).start()

    def next(self, timeout: float) -> str | None:
        import queue

        try:
            return self._q.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None


def _read_json_lines(
    proc: subprocess.Popen, until: str | set[str], timeout: float = 45, app: Running | None = None
) -> list[dict]:
    """Read JSON lines from ``proc`` until it has printed an event of each type in ``until``; fail, never hang."""
    lines = Lines(proc)
    seen: list[dict] = []
    wanted = {until} if isinstance(until, str) else until
    deadline = time.monotonic() + timeout
    while not wanted <= {e["type"] for e in seen}:
        line = lines.next(deadline - time.monotonic())
        if line is None:
            app_log = "".join(app.lines[-30:]) if app else ""
            raise AssertionError(f"no {until} within {timeout}s; got {[e['type'] for e in seen]}\napp stderr:\n{app_log}")
        seen.append(json.loads(line))
    return seen


def test_tail_prints_events_filtered_by_type_and_trace(running, seed_project):
    app = running()
    trace = httpx.post(f"{app.url}/messages", json={"text": "follow me"}).json()["trace_id"]
    other = httpx.post(f"{app.url}/messages", json={"text": "not me"}).json()["trace_id"]
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iii_console",
            "tail",
            "--json",
            "--history",
            "1000",
            "--trace",
            trace[:12],
            "--type",
            "message.",
            "--type",
            "notification.sent",
        ],
        cwd=seed_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The worker's message.processed and the state step's notification.sent come from
        # different runs: either can reach the stream first.
        seen = _read_json_lines(tail, {"notification.sent", "message.processed"}, app=app)
        assert tail.poll() is None  # after the history it keeps following
    finally:
        tail.terminate()
        tail.wait(10)
    types = [e["type"] for e in seen]
    assert {e["trace_id"] for e in seen} == {trace} and other not in {e["trace_id"] for e in seen}
    assert "message.enqueued" in types and "message.processed" in types
    assert "state.changed" not in types and "http.received" not in types


def test_tail_follows_new_events_live(running, seed_project):
    app = running()
    tail = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "tail", "--json", "--type", "http.received"],
        cwd=seed_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Keep sending until tail (which starts at the live end) has picked one up.
        deadline = time.monotonic() + 20
        lines = Lines(tail)
        while (line := lines.next(0.5)) is None:
            assert time.monotonic() < deadline, "tail printed nothing"
            httpx.post(f"{app.url}/messages", json={"text": "live"})
        ev = json.loads(line)
        assert ev["type"] == "http.received" and ev["data"]["body"]["text"] == "live"
    finally:
        tail.terminate()
        tail.wait(10)


def test_metrics_match_what_was_processed_and_health_reports_workers(running, r, keys):
    from prometheus_client.parser import text_string_to_metric_families

    app = running()
    for i in range(5):
        httpx.post(f"{app.url}/messages", json={"text": f"ok {i}"})
    httpx.post(f"{app.url}/messages", json={"text": "flaky", "fail_times": 1})
    wait_for(lambda: len(events(r, keys, "notification.sent")) == 6, timeout=20, what="six notifications")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def val(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{app.url}/metrics").text
        samples.clear()
        samples.update(
            ((s.name, tuple(sorted(s.labels.items()))), s.value)
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        )
        return samples

    proc = {"topic": "message.sent", "step": "ProcessMessage"}
    # Counters go with their events; processing times are added about once a second per process.
    wait_for(
        lambda: (
            scrape()
            and val("iii_notifications_total", step="NotifyCompletion") == 6
            and val("iii_message_processing_seconds_count", **proc) == 7
        ),
        what="metrics caught up",
    )
    assert val("iii_messages_total", outcome="processed", **proc) == 6
    assert val("iii_messages_total", outcome="started", **proc) == 7
    assert val("iii_messages_total", outcome="failed", **proc) == 1
    assert val("iii_message_retries_total", **proc) == 1
    assert val("iii_http_requests_total", step="SendMessage") == 6
    assert val("iii_notifications_total", step="NotifyCompletion") == 6
    assert val("iii_message_processing_seconds_count", **proc) == 7
    assert val("iii_message_processing_seconds_bucket", le="+Inf", **proc) == 7
    assert val("iii_workers") == 1
    assert val("iii_queue_messages", topic="message.sent", state="waiting") == 0
    health = httpx.get(f"{app.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["workers"]["alive"] == 1


def test_metrics_and_health_can_be_turned_off(seed_project):
    (seed_project / "iii-config.yaml").write_text(
        (seed_project / "iii-config.yaml")
        .read_text()
        .replace("server:\n  port: 0\n", "server:\n  port: 0\n  metrics_path: ''\n  health_path: ''\n")
    )
    run = start_cli(seed_project, "--no-ui", "--role", "server")
    try:
        assert httpx.get(f"{run.url}/metrics").status_code == 404
        assert httpx.get(f"{run.url}/health").status_code == 404
    finally:
        assert run.stop() == 0


def test_health_is_503_while_redis_is_down(tmp_path):
    from iii_console.core.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    make_project(tmp_path, {}, "server:\n  port: 0\n", redis_url=server.url)
    run = start_cli(tmp_path, "--no-ui", "--role", "server")
    try:
        assert httpx.get(f"{run.url}/health").json()["status"] == "degraded"  # no workers in this deployment
        server.kill()
        t0 = time.monotonic()
        down = httpx.get(f"{run.url}/health", timeout=10)
        assert down.status_code == 503 and down.headers["retry-after"] == "1" and time.monotonic() - t0 < 2
        post = httpx.post(f"{run.url}/messages", json={"text": "while down"}, timeout=10)
        assert post.status_code == 503 and post.headers["retry-after"] == "1"
        server.start()
        wait_for(lambda: httpx.get(f"{run.url}/health").status_code == 200, what="recovers without restart")
        assert httpx.post(f"{run.url}/messages", json={"text": "back"}).status_code == 202
    finally:
        run.stop()
        server.kill()


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` (Linux ``/proc``) and their command lines."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                with open(f"/proc/{kid}/cmdline", "rb") as f:
                    out[kid] = f.read().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads child processes from /proc")
def test_sigterm_stop_prints_every_event_of_the_run_before_exit(running, r, keys):
    """The echo runs in a child process; a stop still prints the stream to its end (the stop's own events)."""
    before = r.xrevrange(keys.events, count=1)
    app = running()
    httpx.post(f"{app.url}/messages", json={"text": "one"}).raise_for_status()
    wait_for(lambda: events(r, keys, "message.processed"), what="message processed")
    echo = [pid for pid, cmd in _children(app.proc.pid).items() if "iii_console.cli.echo" in cmd]
    assert len(echo) == 1, _children(app.proc.pid)
    assert app.stop() == 0
    assert not pid_alive(echo[0])
    app.proc.out.seek(0)
    printed = [json.loads(line)["type"] for line in app.proc.out.read().splitlines()]
    after = f"({before[0][0].decode()}" if before else "-"
    written = [Event.decode(i, f).type for i, f in r.xrange(keys.events, min=after)]
    assert "worker.stopped" in written
    assert printed == written  # in order, the stop's own events included


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads child processes from /proc")
def test_sigkilled_supervisor_leaves_no_echo_process(running, r, keys):
    app = running()
    wait_for(lambda: events(r, keys, "worker.started"), what="worker started")
    kids = _children(app.proc.pid)
    [echo] = [pid for pid, cmd in kids.items() if "iii_console.cli.echo" in cmd]
    app.proc.kill()
    app.proc.wait(10)
    try:
        wait_for(lambda: not pid_alive(echo), timeout=10, what="the echo process gone")
    finally:
        for pid in kids:  # the workers exit on their own once orphaned; never leave one behind
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
