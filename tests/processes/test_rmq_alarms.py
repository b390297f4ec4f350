"""RabbitMQ resource alarms on a private node: publishing is blocked, HTTP steps answer 503 at once, workers keep
draining, and everything resumes by itself when the alarm clears."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from iii_console.core.discovery import discover

from ..helpers import make_project, wait_for

#: Waits (at most 60 s) until the test opens the gate named ``name``: state group ``gates``, key ``name``.
GATE = """
def wait_gate(ctx, name):
    for _ in range(1200):
        if ctx.state.get("gates", name):
            return
        time.sleep(0.05)
"""

# A job given a "gate" waits for it, so the jobs queued before the alarm are still waiting when it is raised
# however long raising it takes on a loaded machine.
RECORD = (
    """
import time
from iii_console import Step, queue
config = Step(name="Rec", triggers=[queue("jobs")])
"""
    + GATE
    + """
def handler(data, ctx):
    if data.get("gate"):
        wait_gate(ctx, data["gate"])
    time.sleep(data.get("sleep", 0))
    ctx.state.update("runs", "Rec", [{"type": "increment", "path": data["k"]}])
"""
)

# Fails its first attempt once the test opens its gate (during the alarm): its retry is a publish to a delay queue.
SLOW_FAIL = (
    """
import time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("slow")])
"""
    + GATE
    + """
def handler(data, ctx):
    ctx.state.update("runs", "Slow", [{"type": "increment", "path": data["k"]}])
    if ctx.attempt == 1:
        wait_gate(ctx, "fail")
        ctx.state.set("runs", "SlowFailing", True)
        raise RuntimeError("first attempt fails")
"""
)

POST = """
from iii_console import Step, http
config = Step(name="Post", triggers=[http("POST", "/jobs/{topic}")], enqueues=["jobs", "slow"])
def handler(req, ctx):
    ctx.enqueue(req.path_params["topic"], req.body)
    return {"status": 202, "body": {}}
"""


@pytest.fixture
def private_rabbit(tmp_path: Path):
    """A RabbitMQ node of this test alone: its alarms touch no other test's node."""
    from tests.rabbitnode import RabbitNode, rabbit_bin

    if rabbit_bin("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed")
    node = RabbitNode(tmp_path / "rabbit")
    try:
        node.start()
        yield node
    finally:
        node.stop()


def runs(r, keys, step: str) -> dict[str, int]:
    raw = r.hget(keys.state_group("runs"), step)
    return json.loads(raw) if raw else {}


#: (how to raise the alarm, how to clear it (the node's setting in ``tests/rabbitnode.py``), RabbitMQ's reason)
ALARMS = {
    "memory": (("set_vm_memory_high_watermark", "0.0000001"), ("set_vm_memory_high_watermark", "0.6"), "low on memory"),
    "disk": (("set_disk_free_limit", "1000000GB"), ("set_disk_free_limit", "50MB"), "low on disk"),
}


@pytest.mark.slow
@pytest.mark.parametrize("alarm", sorted(ALARMS))
def test_an_alarm_answers_503_at_once_workers_drain_and_publishing_resumes_by_itself(
    tmp_path, redis_url, private_rabbit, procs, r, keys, alarm
):
    """Given a server and workers on a private node with messages waiting, when the node's memory (disk) alarm is raised, then
    /health answers 503 naming the alarm (before the server's first enqueue since: its probe publishes), HTTP enqueues
    answer 503 with Retry-After within 3 s each, /health answers 503 naming the alarm, the workers go on
    running what waits; when the alarm clears, enqueues are accepted again without a restart, a retry that fell in the
    alarm runs, and every message answered 202 runs."""
    import httpx

    raise_alarm, clear_alarm, reason = ALARMS[alarm]
    cfg = make_project(
        tmp_path,
        {"rec_step.py": RECORD, "slow_step.py": SLOW_FAIL, "post_step.py": POST},
        f"broker: rabbitmq\nrabbitmq:\n  url: {private_rabbit.url}\n  prefix: alarm\n"
        "queues:\n  jobs:\n    concurrency: 1\n  slow:\n    retry_delay: 200\n    backoff: fixed\n",
        redis_url=redis_url,
    )
    assert not discover(cfg.steps_path).errors
    app = procs(tmp_path, "--port", "0")
    url = app.banner.split(" on ", 1)[1].split(" with", 1)[0]
    accepted: list[str] = []
    refused: list[tuple[str, float]] = []
    raised = False
    try:
        with httpx.Client(base_url=url, timeout=60) as http:

            def post(topic: str, body: dict) -> httpx.Response:
                t0 = time.monotonic()
                resp = http.post(f"/jobs/{topic}", json=body)
                took = time.monotonic() - t0
                if resp.status_code == 202:
                    if topic == "jobs":
                        accepted.append(body["k"])
                else:
                    assert resp.status_code == 503, resp.text
                    assert resp.headers.get("retry-after"), resp.headers
                    refused.append((body["k"], took))
                return resp

            # Work waiting before the alarm: 12 jobs run one at a time, held until the alarm is on, and a message
            # whose first attempt fails once the test says (during the alarm).
            assert post("slow", {"k": "s"}).status_code == 202
            for i in range(12):
                assert post("jobs", {"k": f"pre{i}", "sleep": 0.2, "gate": "drain"}).status_code == 202
            wait_for(lambda: runs(r, keys, "Slow") == {"s": 1}, timeout=30, what="the slow message started")

            done = private_rabbit.ctl(*raise_alarm)
            assert done.returncode == 0, done.stderr
            raised = True
            at = time.monotonic()
            drained_at_alarm = len(runs(r, keys, "Rec"))

            # /health learns of the alarm from its own probe's publish: this server has not published since.
            def health_blocked() -> bool:
                h = http.get("/health")
                return h.status_code == 503 and h.json()["rabbitmq"].get("blocked") == reason

            wait_for(health_blocked, timeout=30, interval=0.5, what="/health naming the alarm before any enqueue")
            # Enqueues until one is refused: the alarm is on and our publisher knows it.
            n = 0
            while not refused:
                assert time.monotonic() - at < 30, "no 503 within 30 s of the alarm"
                post("jobs", {"k": f"during{n}"})
                n += 1
                time.sleep(0.1)
            # From now on every enqueue is refused, each at once.
            for i in range(10):
                post("jobs", {"k": f"refused{i}"})
            assert [k for k, _ in refused[-10:]] == [f"refused{i}" for i in range(10)], refused
            slowest = max(took for _, took in refused)
            assert slowest < 3.0, refused
            health = http.get("/health")
            assert health.status_code == 503, health.text
            assert health.json()["rabbitmq"]["blocked"] == reason, health.text
            # Workers go on running what waits, and the slow message's first attempt fails meanwhile.
            r.hset(keys.state_group("gates"), mapping={"drain": "true", "fail": "true"})
            wait_for(
                lambda: len(runs(r, keys, "Rec")) >= drained_at_alarm + 4, timeout=30, what="workers draining during the alarm"
            )
            wait_for(
                lambda: r.hexists(keys.state_group("runs"), "SlowFailing"),
                timeout=30,
                what="the slow message's first attempt failing",
            )
            time.sleep(1.0)  # its retry would have run by now without the alarm (retry_delay 200 ms)
            assert runs(r, keys, "Slow") == {"s": 1}  # its retry waits for the alarm to clear

            done = private_rabbit.ctl(*clear_alarm)
            assert done.returncode == 0, done.stderr
            raised = False
            cleared = time.monotonic()
            n = 0
            while accepted[-1:] != [f"after{n - 1}"]:
                assert time.monotonic() - cleared < 60, "no 202 within 60 s of the alarm clearing"
                post("jobs", {"k": f"after{n}"})
                n += 1
                time.sleep(0.1)
            resumed = time.monotonic() - cleared
            wait_for(lambda: http.get("/health").status_code == 200, timeout=15, what="/health 200 again")
            print(
                f"\n{alarm} alarm: {len(refused)} refused, slowest 503 {slowest:.2f} s; first 202 {resumed:.2f} s after the alarm cleared"
            )
            wait_for(lambda: set(accepted) <= set(runs(r, keys, "Rec")), timeout=60, what="every accepted message run")
            wait_for(lambda: runs(r, keys, "Slow").get("s", 0) >= 2, timeout=30, what="the retry after the alarm")
            print(
                f"retried message ran {runs(r, keys, 'Slow')['s']} times; refused ones run: "
                f"{sorted(set(k for k, _ in refused) & set(runs(r, keys, 'Rec')))}"
            )
    finally:
        if raised:
            private_rabbit.ctl(*clear_alarm)
    os.killpg(app.pid, signal.SIGTERM)
    try:
        _, err = app.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(app.pid, signal.SIGKILL)
        _, err = app.communicate(timeout=10)
    assert f"RabbitMQ blocked publishing (resource alarm: {reason})" in err, err[-3000:]
    assert "RabbitMQ unblocked publishing after" in err, err[-3000:]
