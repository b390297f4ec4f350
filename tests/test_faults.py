"""Faults: Redis dies and comes back while messages are failing and retrying."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from iii_console.core.dlq import DeadLetterStore
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer

from .conftest import ROOT
from .helpers import events, make_project, wait_for
from .test_e2e import start_cli

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


def test_redis_restart_mid_retries_loses_nothing_and_everything_reconnects(tmp_path):
    keys = Keys()
    server = RedisServer(tmp_path / "redis", appendonly=True, extra=["--appendfsync", "always"]).start()
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    make_project(tmp_path, {}, CONFIG, redis_url=server.url)
    run = start_cli(tmp_path, "--no-ui")
    try:
        plan = {f"ok{i}": 0 for i in range(15)} | {f"flaky{i}": 1 for i in range(10)} | {f"doomed{i}": 99 for i in range(5)}
        ids = {}
        for name, fails in plan.items():
            resp = httpx.post(f"{run.url}/messages", json={"text": name, "fail_times": fails})
            assert resp.status_code == 202
            ids[name] = resp.json()["id"]
        time.sleep(0.4)  # retries are now pending in the delay queues and in flight
        server.kill()
        t0 = time.monotonic()
        down = httpx.post(f"{run.url}/messages", json={"text": "while down"}, timeout=10)
        assert down.status_code == 503 and time.monotonic() - t0 < 2
        time.sleep(1.5)
        server.start()

        client = server_client(server)
        status = lambda: {n: (json.loads(client.hget(keys.state_group("messages"), i) or "{}")).get("status") for n, i in ids.items()}  # noqa: E731
        store = DeadLetterStore(client, keys)
        wait_for(lambda: store.count("message.sent.dlq") == 5 and all(v == "processed" for n, v in status().items() if not n.startswith("doomed")),
                 timeout=60, what="every message processed or dead-lettered after the restart")
        assert {e.data["id"] for e in store.list("message.sent.dlq")} == {ids[f"doomed{i}"] for i in range(5)}
        after = httpx.post(f"{run.url}/messages", json={"text": "after"})
        assert after.status_code == 202  # the server reconnected by itself
        wait_for(lambda: json.loads(client.hget(keys.state_group("messages"), after.json()["id"]) or "{}").get("status") == "processed",
                 timeout=30, what="new work flows after the restart")
        notes = {e.data["message_id"] for e in events(client, keys, "notification.sent")}
        assert {ids[n] for n in plan if not n.startswith("doomed")} <= notes
    finally:
        assert run.stop() == 0
        server.stop()


def server_client(server: RedisServer):
    import redis

    return redis.Redis.from_url(server.url)
