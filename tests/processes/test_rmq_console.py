"""A RabbitMQ deployment as the console, ``/health`` and ``config check`` see it, on the session's real node.

The console reads Redis only: the supervisor copies RabbitMQ's queue depths and
its broker's name there, and the console shows them as it shows Redis's own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import pika
import pytest

from iii_console.adapters.queue.names import Subscription
from iii_console.adapters.queue.rmq_topology import Topology
from iii_console.adapters.queue.rmq_watch import MIRROR_TTL_S, DepthMirror
from iii_console.tui.source import Snapshot, fetch

from ..helpers import events, make_project, wait_for

JOBS = """
from iii_console import Step, queue
config = Step(name="Rec", triggers=[queue("jobs")])
def handler(data, ctx):
    pass
"""
POST = """
from iii_console import Step, http
config = Step(name="Post", triggers=[http("POST", "/jobs")], enqueues=["jobs"])
def handler(req, ctx):
    ctx.enqueue("jobs", req.body, priority=req.body.get("priority", "normal"))
    return {"status": 202, "body": {}}
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_messages_waiting_on_rabbitmq_show_in_the_consoles_snapshot(rabbit_node, rabbit_prefix, r, keys):
    """Given 2 high and 3 normal messages ready on a subscription's quorum queues (and a subscription whose
    queues nobody declared yet), when the mirror copies the depths, then the console's snapshot counts them by
    priority under their topic, and the copy expires on its own."""
    rec, idle = Subscription("jobs", "Rec"), Subscription("other", "Idle")
    topo = Topology(rabbit_prefix, lambda _t: 3)
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_node.url))
    try:
        ch = conn.channel()
        topo.declare_subscription(ch, "jobs", rec.queues)
        for prio, n in (("high", 2), ("normal", 3)):
            for _ in range(n):
                ch.basic_publish("", topo.queue(rec.queue(prio)), b"{}")
        mirror = DepthMirror(rabbit_node.url, rabbit_prefix, r, keys, [idle, rec])
        try:
            assert wait_for(lambda: mirror.copy_once().get(rec.queue("normal")) == 3, timeout=5)
        finally:
            mirror._close()
    finally:
        conn.close()
    snap = fetch(r, keys, Snapshot(), {"registry", "queues"})
    jobs = snap.queues["jobs"]
    assert (jobs.waiting, jobs.by_priority, jobs.steps) == (5, {"high": 2, "normal": 3, "low": 0}, {"Rec"})
    assert "other" not in snap.queues and snap.broker == "redis"
    assert 0 < r.ttl(keys.broker_depths) <= MIRROR_TTL_S


def test_reading_the_depth_of_a_queue_not_declared_yet_logs_nothing(rabbit_node, rabbit_prefix, r, keys, caplog):
    """Given a subscription whose queues no worker declared yet (a server started before its workers), when the
    mirror reads its depths, then it leaves them out and no pika warning of the 404 reaches the logs (it is
    expected, and a user's terminal showed it before the server's banner)."""
    mirror = DepthMirror(rabbit_node.url, rabbit_prefix, r, keys, [Subscription("nobody", "Idle")])
    try:
        with caplog.at_level("DEBUG", logger="pika"):
            read = mirror.read()
            read_again = mirror.read()  # on a reopened channel
    finally:
        mirror._close()
    assert set(read) == set(read_again) == {"delayed"}
    assert not [rec for rec in caplog.records if rec.levelno >= 30], [rec.getMessage() for rec in caplog.records]


@pytest.mark.slow
def test_a_rabbitmq_deployment_shows_its_depths_and_broker_to_the_console_and_health(
    tmp_path, redis_url, rabbit_node, rabbit_prefix, procs, r, keys
):
    """Given a server-only RabbitMQ deployment (no worker drains the queue), when 3 messages are posted, then the
    console's snapshot reads 3 waiting on `jobs` and the broker `rabbitmq`, and /health checks RabbitMQ."""
    make_project(
        tmp_path,
        {"rec_step.py": JOBS, "post_step.py": POST},
        f"broker: rabbitmq\nrabbitmq:\n  url: {rabbit_node.url}\n  prefix: {rabbit_prefix}\n",
        redis_url=redis_url,
    )
    app = procs(tmp_path, "--role", "server", "--port", "0")
    url = app.banner.split(" on ", 1)[1].split(" with", 1)[0]
    for prio in ("high", "normal", "normal"):
        assert httpx.post(f"{url}/jobs", json={"priority": prio}, timeout=10).status_code == 202
    snap = wait_for(
        lambda: (
            (s := fetch(r, keys, Snapshot(), {"registry", "queues"})).queues.get("jobs") and s.queues["jobs"].waiting == 3 and s
        ),
        timeout=10,
        what="the depths copied from RabbitMQ",
    )
    assert snap.broker == "rabbitmq" and snap.queues["jobs"].by_priority == {"high": 1, "normal": 2, "low": 0}
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["rabbitmq"]["ok"] is True, health.text
    # What the terminal showed meanwhile: no library's INFO lines (pika's "Created channel", ...).
    app.send_signal(signal.SIGTERM)
    assert app.wait(30) == 0
    rest = app.stderr.read()
    assert not [ln for ln in rest.splitlines() if ln.startswith(("INFO", "DEBUG")) or " INFO " in ln], rest


@pytest.mark.slow
def test_health_answers_503_naming_rabbitmq_without_its_url_when_it_is_down(tmp_path, redis_url, procs):
    """Given a deployment whose rabbitmq.url points at a closed port, /health answers 503 naming rabbitmq, quickly,
    and says nothing of the URL, host, port or credentials."""
    import time

    port = _closed_port()
    make_project(
        tmp_path,
        {"post_step.py": POST},
        f"broker: rabbitmq\nrabbitmq:\n  url: amqp://app:hunter2@127.0.0.1:{port}/%2F\n",
        redis_url=redis_url,
    )
    app = procs(tmp_path, "--role", "server", "--port", "0")
    url = app.banner.split(" on ", 1)[1].split(" with", 1)[0]
    t0 = time.monotonic()
    resp = httpx.get(f"{url}/health", timeout=10)
    assert resp.status_code == 503 and resp.headers.get("retry-after"), resp.text
    body = resp.json()
    assert body["status"] == "unavailable" and body["rabbitmq"]["ok"] is False and body["redis"]["ok"] is True
    assert str(port) not in resp.text and "hunter2" not in resp.text and "127.0.0.1" not in resp.text
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    ("config", "env", "finding"),
    [
        ("broker: rabbitmq\n", {}, "a.yaml:1: broker: rabbitmq needs rabbitmq.url (or RABBITMQ_URL)"),
        ("broker: rabbitmq\nrabbitmq:\n  url: http://app:hunter2@h/\n", {}, "a.yaml:3: rabbitmq.url: not an AMQP URL"),
        ("broker: rabbitmq\n", {"RABBITMQ_URL": "redis://app:hunter2@h"}, "RABBITMQ_URL (environment): not an AMQP URL"),
        ("broker: rabbitmq\n", {"RABBITMQ_URL": "amqps://app:hunter2@h/v"}, ""),
        (
            "broker: rabbitmq\nrabbitmq:\n  url: 'amqp://a:hunter2@h1/v; http://a:hunter2@h2/v'\n",
            {},
            "a.yaml:3: rabbitmq.url: not an AMQP URL (node 2 of 2)",
        ),
        ("broker: rabbitmq\n", {"RABBITMQ_URL": "amqp://a:hunter2@h1:5673/v;amqp://a:hunter2@h2:5674/v;"}, ""),
    ],
    ids=["no url", "http url", "redis env url", "env url", "a bad node in a list", "env list of nodes"],
)
def test_config_check_names_the_broker_setting_at_fault(tmp_path, config, env, finding):
    (tmp_path / "steps").mkdir()
    (tmp_path / "a.yaml").write_text(config)
    clean = {k: v for k, v in os.environ.items() if k not in ("RABBITMQ_URL", "III_BROKER", "REDIS_URL")}
    res = subprocess.run(
        [sys.executable, "-m", "iii_console", "config", "check", "--config", "a.yaml"],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in res.stderr and "hunter2" not in res.stdout + res.stderr
    if finding:
        assert res.returncode == 2 and res.stdout.startswith(finding), res.stdout + res.stderr
    else:
        assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr


def test_config_check_warns_of_a_step_calling_enqueue_group_on_rabbitmq(tmp_path):
    """Given broker: rabbitmq and a step whose file calls ctx.enqueue_group, then config check warns naming the file,
    line and step (fan-in groups need broker: redis); on broker: redis it says nothing of it."""
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "fan_step.py").write_text(
        "from iii_console import Step, queue\n"
        'config = Step(name="Fan", triggers=[queue("go")], enqueues=["jobs", "done"])\n'
        "def handler(data, ctx):\n"
        '    ctx.enqueue_group("jobs", [1, 2], then="done")\n'
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("RABBITMQ_URL", "III_BROKER", "REDIS_URL")}

    def check(config: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "a.yaml").write_text(config)
        return subprocess.run(
            [sys.executable, "-m", "iii_console", "config", "check", "--config", "a.yaml"],
            cwd=tmp_path,
            env=clean,
            capture_output=True,
            text=True,
            timeout=30,
        )

    res = check("broker: rabbitmq\nrabbitmq:\n  url: amqp://h/v\n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fan_step.py:4, step 'Fan': calls enqueue_group, and fan-in groups need broker: redis" in res.stdout, res.stdout
    res = check("")
    assert res.returncode == 0 and "enqueue_group" not in res.stdout, res.stdout


@pytest.mark.anyio
async def test_the_consoles_header_names_a_broker_other_than_redis(redis_url, r, keys):
    """Given a deployment that published `broker: rabbitmq` and RabbitMQ's depths, when the console attaches, then
    its header names rabbitmq beside the Redis address (a Redis deployment's does not) and Queues shows the depth."""
    from ..helpers import console, started, table_rows, topbar, until

    plain = console(redis_url=redis_url)
    async with plain.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        await until(pilot, lambda: plain.snap.polls > 0 and plain.where in topbar(plain), "the header")
        assert "rabbitmq" not in topbar(plain)
    r.hset(keys.deployment_registry, "broker", "rabbitmq")
    r.hset(keys.broker_depths, mapping={"jobs--Rec--normal": 4, "delayed": 3})
    app = console(redis_url=redis_url)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        await until(pilot, lambda: f"{app.where}  rabbitmq" in topbar(app), "the broker in the header")
        await pilot.press("3")
        row = await until(pilot, lambda: table_rows(app, "#queues-table").get("jobs"), "the jobs row in Queues")
        # Delays wait in queues every topic shares: no per-topic figure, the total under the table.
        assert row[2:5] == ["4", "0 / 4 / 0", "-"], row
        sub = str(app.query_one("#queues-table").border_subtitle)
        assert "delayed (retries, delayed sends; all topics, in rabbitmq's delay queues): 3" in sub, sub


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_messages_waiting_out_a_delay_on_rabbitmq_are_the_consoles_delayed_total(
    project, runtime, producer, r, keys, rabbit_node
):
    """Given 2 sends delayed 60 s and 1 delayed an hour on one topic, and a retry waiting out a 60 s backoff on another,
    when the mirror copies RabbitMQ's depths, then the console's snapshot has 4 delayed (the shared delay queues'
    total, the delay queues found through the set their publishers keep in Redis), none of them counted as waiting;
    with no copy (a Redis deployment, or a stale one) there is no total."""
    from iii_console.adapters.queue.producer import subscriptions_for

    flaky = JOBS.replace('"Rec"', '"Flaky"').replace('queue("jobs")', 'queue("flaky")').replace("pass", "raise RuntimeError('x')")
    cfg, steps = project({"rec_step.py": JOBS, "flaky_step.py": flaky}, "queues:\n  flaky:\n    retry_delay: 60000\n")
    p = producer(cfg, steps)
    p.enqueue("jobs", {"k": "a"}, trace_id="t", delay_ms=60_000)
    p.enqueue("jobs", {"k": "b"}, trace_id="t", delay_ms=60_000)
    p.enqueue("jobs", {"k": "c"}, trace_id="t", delay_ms=3_600_000)
    runtime(cfg, steps)
    p.enqueue("flaky", {"k": "d"}, trace_id="t")
    wait_for(lambda: events(r, keys, "message.retrying"), what="the retry published")
    assert {int(d) for d in r.smembers(keys.broker_delays)} == {60_000, 3_600_000}
    subs = [s for group in subscriptions_for(steps.steps).values() for s in group]
    mirror = DepthMirror(rabbit_node.url, cfg.rabbitmq.prefix, r, keys, subs)
    try:
        assert mirror.copy_once()["delayed"] == 4
    finally:
        mirror._close()
    snap = fetch(r, keys, Snapshot(), {"registry", "queues"})
    assert snap.broker_delayed == 4
    assert snap.queues["jobs"].waiting == 0 and snap.queues["flaky"].waiting == 0
    # The metrics say the same: the total, and no per-topic delayed sample that would read 0.
    from iii_console.adapters.observability import _Snapshot

    samples = {(m.name, tuple(sorted(s.labels.items()))): s.value for m in _Snapshot(r, keys, 15).collect() for s in m.samples}
    assert samples[("iii_broker_delayed_messages", ())] == 4
    assert not [k for k in samples if k[0] == "iii_queue_messages" and ("state", "delayed") in k[1]]
    r.delete(keys.broker_depths)
    assert fetch(r, keys, Snapshot(), {"registry", "queues"}).broker_delayed is None  # as on Redis: nothing reported
