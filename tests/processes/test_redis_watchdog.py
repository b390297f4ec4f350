"""The embedded Redis, supervised: SIGKILLed under load it is reaped, started again on
the same append-only file, port and password, everything reconnects, and every
message accepted before the kill is processed. Repeated failures back off."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.runtime.embedded import EmbeddedRedis
from iii_console.runtime.redis_watchdog import RedisWatchdog, RestartBackoff

from ..helpers import REQUIRED, ROOT, env_without_redis, make_project, owner_lock_free, ping, wait_for

CONFIG = """
redis:
  url: ${REDIS_URL:}
  appendfsync: always
server:
  port: 0
workers:
  heartbeat_interval: 0.5
  heartbeat_timeout: 5
  sweep_interval: 0.5
"""


def _zombie_or_alive(pid: int) -> str | None:
    """The process's state letter (``Z`` for a zombie), or ``None`` once it is gone for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_embedded_redis_killed_under_load_comes_back_by_itself_and_loses_no_accepted_message(tmp_path, broker):
    """Given the seed project under HTTP load on the embedded Redis, when that Redis is SIGKILLed, then it is reaped and
    started again on the same file, port and password, and every message accepted before, during and after runs to
    ``processed``. On RabbitMQ the accepted messages wait in RabbitMQ meanwhile, and those whose handler met the outage
    (its state writes fail) are retried until Redis is back."""
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    make_project(tmp_path, {}, CONFIG + broker)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui"],
        cwd=tmp_path,
        env=env_without_redis(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _killed_under_load(proc, tmp_path)
    finally:  # whatever failed, leave no runtime (and its Redis) behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _killed_under_load(proc: subprocess.Popen, tmp_path: Path) -> None:
    banner = proc.stderr.readline()
    assert "running" in banner, banner + proc.stderr.read()
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    base = re.search(r"on (http://\S+) with", banner).group(1)
    info = json.loads((tmp_path / ".iii" / "redis.json").read_text())
    url, old_pid = info["url"], info["redis_pid"]
    assert redis.Redis.from_url(url).config_get("appendfsync") == {"appendfsync": "always"}  # redis.appendfsync
    accepted: list[str] = []
    answers: dict[int, int] = {}
    stop_load = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop_load.is_set():
                try:
                    resp = http.post(f"{base}/messages", json={"text": "under load"})
                except httpx.HTTPError:
                    answers[0] = answers.get(0, 0) + 1
                    continue
                answers[resp.status_code] = answers.get(resp.status_code, 0) + 1
                if resp.status_code == 202:
                    accepted.append(resp.json()["id"])

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_for(lambda: len(accepted) >= 50, timeout=30, what="load before the kill")
        before = len(accepted)
        os.kill(old_pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: ping(url), timeout=15, interval=0.02, what="the embedded Redis back on the same URL")
        back_s = time.monotonic() - t0
        wait_for(lambda: _zombie_or_alive(old_pid) is None, timeout=5, what="the killed redis-server reaped (no zombie)")
        wait_for(lambda: len(accepted) >= before + 50, timeout=30, what="requests accepted again after the restart")
    finally:
        stop_load.set()
        loader.join(30)
    try:
        client = redis.Redis.from_url(url)
        new_info = json.loads((tmp_path / ".iii" / "redis.json").read_text())
        assert client.config_get("appendfsync") == {"appendfsync": "always"}  # the restart keeps it
        assert new_info["url"] == url and new_info["redis_pid"] != old_pid and new_info["pid"] == proc.pid
        keys = Keys()

        def unprocessed() -> list[str]:
            raw = client.hmget(keys.state_group("messages"), accepted)
            return [i for i, v in zip(accepted, raw) if v is None or json.loads(v).get("status") != "processed"]

        wait_for(lambda: not unprocessed(), timeout=90, what="every accepted message processed")
        assert set(answers) <= {202, 503, 0}, answers  # never a 500 while Redis was away
        evs = [Event.decode(i, f) for i, f in client.xrange(keys.events)]
        down = [e for e in evs if e.type == "redis.down"]
        up = [e for e in evs if e.type == "redis.restarted"]
        assert len(down) == 1 and down[0].data["exit"] == "killed by SIGKILL" and down[0].data["pid"] == old_pid
        assert len(up) == 1 and up[0].data["pid"] == new_info["redis_pid"] and up[0].data["down_ms"] < 10_000
        for e in (*down, *up):  # the fields the event table promises
            raw = {k: v for k, v in e.as_dict().items() if v}
            assert REQUIRED[e.type] <= set(raw), (e.type, REQUIRED[e.type] - set(raw))
        # Headless, the outage is also a line on stderr at once (the events wait for Redis).
        assert any("embedded Redis" in line and "killed by SIGKILL" in line for line in stderr), stderr
        assert not any("Traceback" in line for line in stderr), "".join(stderr)
        print(
            f"\nRedis answered again {back_s:.2f} s after SIGKILL (down {up[0].data['down_ms']} ms by the watchdog); "
            f"{len(accepted)} accepted, all processed; answers {answers}"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, "".join(stderr)
    assert not ping(url) and owner_lock_free(tmp_path)


def test_restart_backoff_grows_for_quick_deaths_and_resets_after_a_stable_run():
    b = RestartBackoff(base_s=0.5, max_s=4.0, stable_s=30.0)
    assert [b.next_delay(ran) for ran in (100, 1, 0, 0, 0, 0, 0)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.next_delay(31) == 0.0 and b.next_delay(2) == 0.5


def test_a_restart_that_cannot_bind_its_port_is_reported_and_retried_with_backoff_until_it_can(tmp_path):
    """The port is taken by someone else when Redis dies: every failed start is a redis.down
    with the error and a growing delay, and the restart succeeds once the port is free."""
    emb = EmbeddedRedis(tmp_path / ".iii")
    url = emb.start()
    emitted: list[tuple[str, dict]] = []
    stopping = threading.Event()
    dog = RedisWatchdog(
        emb,
        lambda type, **kw: emitted.append((type, kw)),
        stopping=stopping.is_set,
        backoff=RestartBackoff(base_s=0.2, max_s=0.4),
        poll_s=0.05,
    )
    port = emb.server.port
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    os.kill(emb.server.proc.pid, signal.SIGKILL)
    wait_for(lambda: not ping(url), what="the server gone")
    wait_for(lambda: _bound(squatter, port), what="the port taken by someone else")

    async def scenario() -> None:
        task = asyncio.create_task(dog.run())
        while sum(t == "redis.down" for t, _ in emitted) < 4:
            await asyncio.sleep(0.02)
        squatter.close()
        while not any(t == "redis.restarted" for t, _ in emitted):
            await asyncio.sleep(0.02)
        stopping.set()
        await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        assert ping(url)
        downs = [kw for t, kw in emitted if t == "redis.down"]
        assert downs[0]["data"]["exit"] == "killed by SIGKILL" and downs[0]["error"].endswith("killed by SIGKILL")
        assert all("address already in use" in d["error"] for d in downs[1:]), downs
        delays = [d["data"]["restart_in_ms"] for d in downs]
        assert delays[:4] == [0, 200, 400, 400], delays
        [(_, up)] = [(t, kw) for t, kw in emitted if t == "redis.restarted"]
        assert up["data"]["attempts"] == len(downs) and up["data"]["restarts"] == 1
    finally:
        squatter.close()
        emb.stop()


def _bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    sock.listen(1)
    return True


ECHO = """
from iii_console import Step, queue
config = Step(name="Echo", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.set("echo", data["k"], True)
"""


def test_a_worker_started_while_redis_is_away_waits_for_it_instead_of_dying(tmp_path, caplog):
    """A worker process (re)started during a Redis restart waits for Redis, then works."""
    from iii_console.adapters.queue.producer import subscriptions_for
    from iii_console.core.discovery import discover
    from iii_console.core.redis_server import RedisServer
    from iii_console.runtime.runner import StepRunner
    from iii_console.runtime.services import Services
    from iii_console.runtime.worker import WorkerRuntime

    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    cfg = make_project(tmp_path, {"echo_step.py": ECHO}, "", redis_url=server.url)
    steps = discover(cfg.steps_path)
    server.stop()
    rt = WorkerRuntime(cfg, steps, threads=2)
    failed: list[BaseException] = []

    def start() -> None:
        try:
            rt.start()
        except BaseException as exc:
            failed.append(exc)

    starter = threading.Thread(target=start)
    try:
        starter.start()
        time.sleep(1.5)
        assert starter.is_alive() and not failed  # waiting, not dead
        assert "Redis unavailable" in caplog.text and "waiting for it" in caplog.text
        server.start()
        starter.join(15)
        assert not starter.is_alive() and not failed, failed
        client = redis.Redis.from_url(server.url)
        assert client.zscore(rt.services.keys.worker_heartbeats, rt.worker_id) is not None
        svc = Services.open(cfg, "test")
        StepRunner(svc, subscriptions_for(steps.steps)).producer.enqueue("jobs", {"k": "after"}, trace_id="t")
        svc.close()
        wait_for(lambda: client.hget(Keys().state_group("echo"), "after") == b"true", what="the worker to run a message")
    finally:
        if not starter.is_alive():
            rt.stop(timeout_s=5)
        server.stop()


def test_an_adopted_redis_that_dies_is_restarted_too(tmp_path):
    """A server adopted from a dead owner is not our child; its death is noticed all the same."""
    from ..helpers import ORPHAN

    data = tmp_path / ".iii"
    owner = subprocess.Popen([sys.executable, "-c", ORPHAN, str(data)], stdout=subprocess.PIPE, text=True)
    url = owner.stdout.readline().strip()
    owner.kill()
    owner.wait()
    emb = EmbeddedRedis(data)
    assert emb.start() == url and emb.adopted_pid is not None
    orphan = emb.adopted_pid
    emitted: list[tuple[str, dict]] = []
    stopping = threading.Event()
    dog = RedisWatchdog(emb, lambda type, **kw: emitted.append((type, kw)), stopping=stopping.is_set, poll_s=0.05)

    async def scenario() -> None:
        task = asyncio.create_task(dog.run())
        os.kill(orphan, signal.SIGKILL)
        while not any(t == "redis.restarted" for t, _ in emitted):
            await asyncio.sleep(0.02)
        stopping.set()
        await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        assert ping(url) and emb.server is not None and emb.adopted_pid is None  # ours now, stopped with us
        [(_, down)] = [(t, kw) for t, kw in emitted if t == "redis.down"]
        assert down["data"]["pid"] == orphan and "adopted" in down["data"]["exit"]
    finally:
        emb.stop()
        if _zombie_or_alive(orphan) not in (None, "Z"):
            os.kill(orphan, signal.SIGKILL)
    assert not ping(url)


def test_a_worker_waiting_for_redis_at_start_exits_once_its_supervisor_is_gone(tmp_path):
    """Waiting for Redis must not outlive the supervisor (with the embedded Redis gone too,
    nobody would ever stop the process): it exits with one line, no traceback."""
    from iii_console.core.redis_server import free_port

    cfg = make_project(tmp_path, {"echo_step.py": ECHO}, "", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    env = {**env_without_redis(), "III_CONFIG_JSON": cfg.model_dump_json(), "III_SUPERVISOR_PID": "1"}  # not its parent: gone
    res = subprocess.run(
        [sys.executable, "-m", "iii_console.runtime.worker"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1, res.stderr
    assert "waiting for it" in res.stderr and "supervisor is gone" in res.stderr and "Traceback" not in res.stderr, res.stderr
