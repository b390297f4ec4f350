"""Faults: Redis dies and comes back while messages are failing and retrying."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest
import redis

from iii_console.core.dlq import DeadLetterStore
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer

from ..checker import check_stream
from ..helpers import ROOT, events, events_once, make_project, rabbit_messages, start_cli, wait_for

pytestmark = pytest.mark.slow

CONFIG = """
server:
  port: 0
queues:
  message.sent:
    max_retries: 2
    retry_delay: 300
    backoff: fixed
    dead_letter_queue: message.sent.dlq
workers:
  heartbeat_interval: 0.5
  heartbeat_timeout: 10
  sweep_interval: 0.5
"""


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_redis_restart_mid_retries_loses_nothing_and_everything_reconnects(tmp_path, broker, request):
    """Given 15 messages that succeed, 10 that fail once and 5 that always fail, when Redis is killed while their retries
    wait and started again 1.5 s later, then HTTP answers 503 meanwhile, every message ends processed or (the 5) in its
    dead-letter queue, and new work flows. On Redis the stream also agrees with the queues about every message; on
    RabbitMQ the retries waited in its delay queues and nothing is left in any queue."""
    keys = Keys()
    server = RedisServer(tmp_path / "redis", appendonly=True, extra=["--appendfsync", "always"]).start()
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    cfg = make_project(tmp_path, {}, CONFIG + broker, redis_url=server.url)
    run = start_cli(tmp_path, "--no-ui")
    try:
        plan = {f"ok{i}": 0 for i in range(15)} | {f"flaky{i}": 1 for i in range(10)} | {f"doomed{i}": 99 for i in range(5)}
        ids, traces = {}, set()
        for name, fails in plan.items():
            resp = httpx.post(f"{run.url}/messages", json={"text": name, "fail_times": fails})
            assert resp.status_code == 202
            ids[name] = resp.json()["id"]
            traces.add(resp.json()["trace_id"])
        time.sleep(0.4)  # retries are now waiting in the delayed sets and in flight
        server.kill()
        t0 = time.monotonic()
        down = httpx.post(f"{run.url}/messages", json={"text": "while down"}, timeout=10)
        assert down.status_code == 503 and time.monotonic() - t0 < 2
        time.sleep(1.5)
        server.start()

        client = server_client(server)

        def status():
            return {n: (json.loads(client.hget(keys.state_group("messages"), i) or "{}")).get("status") for n, i in ids.items()}

        store = DeadLetterStore(client, keys)
        try:
            wait_for(
                lambda: (
                    store.count("message.sent.dlq") == 5
                    and all(v == "processed" for n, v in status().items() if not n.startswith("doomed"))
                ),
                timeout=60,
                what="every message processed or dead-lettered after the restart",
            )
        except AssertionError:
            where = rabbit_messages(request.getfixturevalue("rabbit_node"), cfg.rabbitmq.prefix) if broker else {}
            late = {n: v for n, v in status().items() if v != "processed"}
            raise AssertionError(
                f"dead letters {store.count('message.sent.dlq')}, not processed {late}, queues {where},"
                f" log tail {''.join(run.lines[-40:])}"
            ) from None
        assert {e.data["id"] for e in store.list("message.sent.dlq")} == {ids[f"doomed{i}"] for i in range(5)}
        after = httpx.post(f"{run.url}/messages", json={"text": "after"})
        assert after.status_code == 202  # the server reconnected by itself
        wait_for(
            lambda: (
                json.loads(client.hget(keys.state_group("messages"), after.json()["id"]) or "{}").get("status") == "processed"
            ),
            timeout=30,
            what="new work flows after the restart",
        )
        # A message's notification comes from the state step its last status change triggers, after that change.
        wanted = {ids[n] for n in plan if not n.startswith("doomed")}
        wait_for(
            lambda: wanted <= {e.data["message_id"] for e in events(client, keys, "notification.sent")},
            timeout=30,
            what="a notification for every processed message",
        )
        if broker:
            rabbit = request.getfixturevalue("rabbit_node")
            wait_for(lambda: not any(rabbit_messages(rabbit, cfg.rabbitmq.prefix).values()), what="every queue empty")
        else:
            # Every message settled: the stream says so exactly once each, and the counters agree with it.
            report = check_stream(client, keys, traces, topic="message.sent")
            assert report.ok, report
    finally:
        assert run.stop() == 0
        server.stop()


def server_client(server: RedisServer):
    import redis

    return redis.Redis.from_url(server.url)


SLOW_STEP = """
import time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("slow")])
def handler(data, ctx):
    ctx.state.update("runs", "Slow", [{"type": "increment", "path": data["k"]}])
    time.sleep(data["sleep"])
"""


def test_a_crash_while_redis_is_down_is_recovered_once_redis_is_back(tmp_path):
    """Given a worker running a long handler and a heartbeat timeout of 60 s (the sweep cannot help), when Redis goes
    down and then the worker is SIGKILLed, then its supervisor keeps trying to give the message back and does so once
    Redis is back: the message runs again and is processed, with its message.redelivered and worker.stopped events."""
    import os
    import signal

    keys = Keys()
    server = RedisServer(tmp_path / "redis", appendonly=True, extra=["--appendfsync", "always"]).start()
    make_project(
        tmp_path,
        {"slow_step.py": SLOW_STEP},
        "workers:\n  heartbeat_interval: 0.5\n  heartbeat_timeout: 60\n  sweep_interval: 0.5\n",
        redis_url=server.url,
    )
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    client = server_client(server)
    try:
        wait_for(lambda: client.hlen(keys.workers) == 1, timeout=30, what="the worker up")
        [info] = [json.loads(v) for v in client.hvals(keys.workers)]
        from iii_console.core.config import load_config

        _enqueue(load_config(tmp_path / "iii-config.yaml", env={}), "slow", [({"k": "m", "sleep": 3}, "t-slow")])
        wait_for(
            lambda: json.loads(client.hget(keys.state_group("runs"), "Slow") or "{}").get("m") == 1, what="the handler to start"
        )
        server.kill()
        os.kill(info["pid"], signal.SIGKILL)
        time.sleep(2.0)  # the supervisor is retrying its recovery meanwhile
        server.start()
        client = server_client(server)
        wait_for(
            lambda: json.loads(client.hget(keys.state_group("runs"), "Slow") or "{}").get("m") == 2,
            timeout=30,
            what="the message run again after Redis came back",
        )
        wait_for(
            lambda: [e for e in events(client, keys, "message.processed") if e.trace_id == "t-slow"],
            timeout=30,
            what="it processed",
        )
        [back] = [e for e in events(client, keys, "message.redelivered") if e.trace_id == "t-slow"]
        assert back.data["reason"] == "crashed"
        assert [
            e
            for e in events(client, keys, "worker.stopped")
            if e.data.get("id") == info["id"] and e.data.get("signal") == "SIGKILL"
        ]
    finally:
        run.stop()
        server.stop()


WAITING_STEP = """
import os, time
from iii_console import Step, queue
config = Step(name="Waiting", triggers=[queue("waiting")])
def handler(data, ctx):
    ctx.state.set("runs", f"started-{ctx.attempt}", 1)
    while not os.path.exists(data["go"]):
        time.sleep(0.02)
    ctx.state.set("runs", "done", {"attempt": ctx.attempt})
"""


def _enqueue(cfg, topic: str, items: list[tuple[dict, str]]) -> None:
    """Enqueue each (data, trace id) to ``topic`` as a step of the project would."""
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.runtime.runner import StepRunner
    from iii_console.runtime.services import Services

    svc = Services.open(cfg, "test")
    try:
        producer = StepRunner(svc, subscriptions_for(discover(cfg.steps_path).steps)).producer
        for data, trace_id in items:
            producer.enqueue(topic, data, trace_id=trace_id)
    finally:
        svc.close()


def _start_worker(tmp_path, server: RedisServer, steps: dict[str, str], config: str):
    """A project of ``steps`` and ``config`` on ``server``, and ``--no-ui --role worker`` running it: (cfg, run, client)."""
    cfg = make_project(tmp_path, steps, config, redis_url=server.url)
    return cfg, start_cli(tmp_path, "--no-ui", "--role", "worker"), server_client(server)


def _fail_for_redis(tmp_path, broker: str, server: RedisServer, break_redis, heal_redis, trace_id: str):
    """Run WAITING_STEP on a topic with no retries, break Redis (``break_redis(client)``) while the handler runs so
    that its next write fails, heal it (``heal_redis(client)`` returns the client to use after), and check that the
    message then ran to success on its first attempt, never dead-lettered. Returns the message's first
    ``message.retrying`` event."""
    keys = Keys()
    cfg, run, client = _start_worker(
        tmp_path, server, {"waiting_step.py": WAITING_STEP}, "queues:\n  waiting:\n    max_retries: 0\n" + broker
    )
    go = tmp_path / "go"
    try:
        _enqueue(cfg, "waiting", [({"go": str(go)}, trace_id)])
        wait_for(lambda: client.hget(keys.state_group("runs"), "started-1"), timeout=30, what="the handler to start")
        break_redis(client)
        go.touch()  # its next write fails
        time.sleep(2.0)
        client = heal_redis(client)
        done = wait_for(lambda: client.hget(keys.state_group("runs"), "done"), timeout=30, what="the message run again")
        assert json.loads(done) == {"attempt": 1}  # the attempt was not spent
        [waited, *_] = events_once(client, keys, "message.retrying", 1, lambda e: e.trace_id == trace_id)
        assert waited.data.get("counts") is False, waited.data
        events_once(client, keys, "message.processed", 1, lambda e: e.trace_id == trace_id)
        assert DeadLetterStore(client, keys).count(cfg.queue("waiting").dead_letter_queue) == 0
        assert not [e for e in events(client, keys, "message.dead_lettered") if e.trace_id == trace_id]
        return waited
    finally:
        assert run.stop() == 0
        server.stop()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_handler_that_fails_because_redis_is_down_spends_no_attempt(tmp_path, broker, request):
    """Given a topic with no retries at all, when Redis goes down while its handler runs so that the handler's state
    write fails, then the failure is the store's, not the handler's: the message waits (no attempt spent, a
    message.retrying with store_unreachable) and runs again once Redis is back, to success, never dead-lettered. With
    RabbitMQ deliveries go on while Redis is down, so a spent attempt would dead-letter it on the spot."""
    server = RedisServer(tmp_path / "redis", appendonly=True, extra=["--appendfsync", "always"]).start()

    def heal(_client):
        server.start()
        return server_client(server)

    waited = _fail_for_redis(tmp_path, broker, server, lambda _client: server.kill(), heal, "t-wait")
    assert waited.data.get("store_unreachable") is True, waited.data
    assert "ConnectionError" in (waited.error or "")


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_handler_that_fails_because_redis_is_full_spends_no_attempt(tmp_path, broker, request):
    """Given a topic with no retries at all, when the deployment's Redis fills up (``maxmemory`` with
    ``noeviction``) while its handler runs so that the handler's state write is refused, then the failure is
    the store's: no attempt is spent, and once Redis has room again the message runs to success, never
    dead-lettered; the wait is told as a message.retrying with store_refuses_writes."""
    server = RedisServer(tmp_path / "redis", appendonly=False, extra=["--maxmemory-policy", "noeviction"]).start()

    def fill(client):
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)  # every write is refused now

    def heal(client):
        assert client.hget(Keys().state_group("runs"), "done") is None
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("still-full", 1)  # it was full all along
        client.config_set("maxmemory", 0)
        return client

    waited = _fail_for_redis(tmp_path, broker, server, fill, heal, "t-full")
    assert waited.data.get("store_refuses_writes") is True, waited.data
    assert "OutOfMemoryError" in (waited.error or "") or "OOM" in (waited.error or ""), waited.error


HELD_STEP = """
import os, time
from iii_console import Step, queue
config = Step(name="Held", triggers=[queue("held")])
def handler(data, ctx):
    with open(data["log"], "a") as f:
        f.write(f"{data['n']} {time.time():.3f}\\n")
    while not os.path.exists(data["go"]):
        time.sleep(0.02)
    ctx.state.set("held", str(data["n"]), ctx.attempt)
"""


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_while_redis_is_down_a_rabbitmq_worker_holds_its_deliveries(tmp_path, broker, request):
    """Given 20 messages on RabbitMQ and two handler threads, when Redis goes down and the two running
    handlers fail for it, then the worker stops starting handlers: during a 7 s outage only what it had
    already prefetched runs (each run writes a line to a file before it touches Redis), not every waiting
    message again and again. Once Redis is back each message runs to success on its first attempt."""
    keys = Keys()
    server = RedisServer(tmp_path / "redis", appendonly=True, extra=["--appendfsync", "always"]).start()
    cfg, run, client = _start_worker(
        tmp_path, server, {"held_step.py": HELD_STEP}, "workers:\n  threads: 2\nqueues:\n  held:\n    max_retries: 0\n" + broker
    )
    go, log = tmp_path / "go", tmp_path / "runs.log"
    log.touch()
    try:
        _enqueue(cfg, "held", [({"n": n, "go": str(go), "log": str(log)}, f"t-held-{n}") for n in range(20)])
        wait_for(lambda: len(log.read_text().splitlines()) >= 2, timeout=30, what="two handlers to start")
        time.sleep(0.3)
        assert len(log.read_text().splitlines()) == 2  # two threads, both waiting for "go"
        server.kill()
        go.touch()  # both running handlers now fail for want of Redis
        time.sleep(3.0)
        held = len(log.read_text().splitlines()) - 2
        # What the worker had prefetched (twice its threads) may still start; nothing beyond, and nothing twice.
        assert held <= 4, f"{held} handler runs in the outage's first 3 s (message, start):\n{log.read_text()}"
        time.sleep(4.0)  # without the hold, each thread starts another message every second or two
        assert len(log.read_text().splitlines()) - 2 == held, f"handlers kept starting while Redis was down:\n{log.read_text()}"
        server.start()
        client = server_client(server)
        done = wait_for(
            lambda: (got := client.hgetall(keys.state_group("held"))) and len(got) == 20 and got,
            timeout=60,
            what="all 20 messages to run again",
        )
        assert {json.loads(v) for v in done.values()} == {1}  # no attempt was spent on the outage
        assert DeadLetterStore(client, keys).count(cfg.queue("held").dead_letter_queue) == 0
        assert not events(client, keys, "message.dead_lettered")
    finally:
        assert run.stop() == 0
        server.stop()
