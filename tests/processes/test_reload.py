"""Hot reload through the CLI: new code takes over without losing messages; a
broken save is reported and the last good version keeps running."""

from __future__ import annotations

import json
import textwrap
import time

import httpx
import pytest

from ..helpers import events, make_project, start_cli, wait_for

pytestmark = pytest.mark.slow

V1 = """
from iii_console import Step, http, queue
config = Step(name="Job", triggers=[queue("jobs"), http("POST", "/jobs")], enqueues=["jobs"])
async def handler(input, ctx):
    if ctx.trigger["type"] == "http":
        await ctx.enqueue("jobs", input.body)
        return {"status": 202, "body": {"ok": True}}
    await ctx.state.set("jobs", input["k"], {"version": VERSION})
VERSION = 1
"""


def test_saving_a_step_reloads_it_and_a_broken_save_keeps_the_last_good_version(tmp_path, r, keys, redis_url):
    make_project(tmp_path, {"job_step.py": V1}, "server:\n  port: 0\n", redis_url=redis_url)
    run = start_cli(tmp_path, "--no-ui", "--reload")
    try:
        version = lambda k: (json.loads(r.hget(keys.state_group("jobs"), k) or "null") or {}).get("version")  # noqa: E731
        assert httpx.post(f"{run.url}/jobs", json={"k": "a"}).status_code == 202
        wait_for(lambda: version("a") == 1, what="v1 handled a")

        for i in range(20):  # in flight while the workers restart
            httpx.post(f"{run.url}/jobs", json={"k": f"m{i}"})
        (tmp_path / "steps" / "job_step.py").write_text(
            textwrap.dedent(V1)
            .replace("VERSION = 1", "VERSION = 2")
            .replace('http("POST", "/jobs")', 'http("POST", "/jobs"), http("POST", "/v2/jobs")')
        )
        wait_for(lambda: [e for e in events(r, keys, "config.reloaded") if e.data.get("ok")], timeout=20, what="reload")
        assert httpx.post(f"{run.url}/v2/jobs", json={"k": "b"}).status_code == 202  # the new route is served
        wait_for(lambda: version("b") == 2, timeout=20, what="new code handles b")
        wait_for(lambda: all(version(f"m{i}") in (1, 2) for i in range(20)), timeout=20, what="no message lost across the reload")

        (tmp_path / "steps" / "job_step.py").write_text("from iii_console import Step\nconfig = Step(name='Job', triggers=[])\n")
        failed = wait_for(
            lambda: [e for e in events(r, keys, "config.reloaded") if e.data.get("ok") is False], timeout=20, what="failed reload"
        )
        assert "job_step.py" in failed[0].data["errors"][0] and "triggers" in failed[0].data["errors"][0]
        errors = events(r, keys, "step.error")
        assert errors and "job_step.py" in errors[-1].data["file"]
        assert httpx.post(f"{run.url}/v2/jobs", json={"k": "c"}).status_code == 202  # last good version still serving
        wait_for(lambda: version("c") == 2, timeout=20, what="last good version still processing")
    finally:
        assert run.stop() == 0


@pytest.mark.anyio
async def test_a_reload_retires_the_replaced_apps_depth_gate_and_clients(tmp_path, redis_url, monkeypatch):
    """Given a server that hot-reloads three times, when the grace period has passed, then only the serving app's
    queue-depth refresher is left, and stopping leaves none (each replaced app used to keep polling Redis forever)."""
    import asyncio
    import shutil

    from iii_console.core.config import load_config
    from iii_console.runtime import supervisor
    from iii_console.runtime.supervisor import Supervisor

    from ..helpers import ROOT

    monkeypatch.setattr(supervisor, "RETIRE_GRACE_S", 0.05)
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    (tmp_path / "iii-config.yaml").write_text(f"redis:\n  url: {redis_url}\nserver:\n  port: 0\n  max_queue_depth: 1000\n")
    sup = Supervisor(load_config(tmp_path / "iii-config.yaml", env={}), roles=("server",))
    await sup.start()

    def refreshers() -> list[asyncio.Task]:
        return [
            t for t in asyncio.all_tasks() if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "DepthGate._refresh"
        ]

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sup.port}") as client:
            for i in range(3):
                assert (await client.post("/messages", json={"text": f"before reload {i}"})).status_code == 202
                assert await sup.reload(["steps/send_message_step.py"])
            assert (await client.post("/messages", json={"text": "after"})).status_code == 202
        for _ in range(100):
            if len(refreshers()) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(refreshers()) == 1
    finally:
        await sup.stop()
    await asyncio.sleep(0)
    assert refreshers() == []


def _worker_children() -> list[int]:
    """Live (not zombie) worker processes whose parent is this test process."""
    import os
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"iii_console.runtime.worker" in cmdline:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.anyio
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
async def test_a_worker_the_monitor_is_restarting_when_a_reload_comes_is_replaced_once(tmp_path, redis_url):
    """Given a worker process that died and whose restart the monitor has scheduled, when a reload replaces the
    workers before that restart is due, then one worker process runs afterwards, not one the reload started plus
    one the monitor started over it (the first would run untracked: never drained, never stopped)."""
    import asyncio
    import shutil
    import signal

    from iii_console.core.config import load_config
    from iii_console.runtime.supervisor import Supervisor

    from ..helpers import ROOT

    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    (tmp_path / "iii-config.yaml").write_text(f"redis:\n  url: {redis_url}\n")
    sup = Supervisor(load_config(tmp_path / "iii-config.yaml", env={}), roles=("worker",), processes=1)
    await sup.start()
    try:
        [child] = sup.children
        child.proc.send_signal(signal.SIGKILL)
        await asyncio.sleep(0.3)  # the monitor (every 0.2 s) has seen it and waits 0.5 s before restarting it
        assert await sup.reload(["steps/send_message_step.py"])
        await asyncio.sleep(1.5)  # past the monitor's restart delay
        assert _worker_children() == [sup.children[0].proc.pid]
    finally:
        await sup.stop()
    assert _worker_children() == []


OTHER = """
from iii_console import Step, state
config = Step(name="Other", triggers=[state("other")])
def handler(change, ctx):
    pass
"""
SLOW = """
import time
from iii_console import Step, http, queue
config = Step(name="Slow", triggers=[queue("slow"), http("POST", "/slow")], enqueues=["slow"])
def handler(input, ctx):
    if ctx.trigger["type"] == "http":
        ctx.enqueue("slow", {})
        return {"status": 202, "body": {}}
    time.sleep(5)
"""
ON_ORDER = """
from iii_console import Step, state
config = Step(name="OnOrder", triggers=[state("orders")])
def handler(change, ctx):
    ctx.state.set("seen", change.key, True)
"""


def test_a_state_step_a_reload_adds_fires_for_changes_made_while_the_old_worker_drains(tmp_path, r, keys, redis_url):
    """Given a worker with a state step on another group and a 5 s handler running, when a reload adds a state step
    on `orders` and `orders` changes every 0.3 s until the reload is done, then every change made once the group was
    watched fires the new step: the old worker, still draining, leaves those records for the new one (it read them,
    matched none of its steps and acknowledged them: the new step never saw them)."""
    from iii_console.core.state import StateStore

    make_project(
        tmp_path,
        {"other_step.py": OTHER, "slow_step.py": SLOW},
        "server:\n  port: 0\nworkers:\n  heartbeat_interval: 0.3\n  heartbeat_timeout: 2\n  sweep_interval: 0.5\n",
        redis_url=redis_url,
    )
    run = start_cli(tmp_path, "--no-ui", "--reload", "--processes", "1")
    try:
        store = StateStore(r, keys)
        assert httpx.post(f"{run.url}/slow", json={}).status_code == 202
        wait_for(lambda: [e for e in events(r, keys, "message.started") if e.step == "Slow"], what="the slow handler started")
        (tmp_path / "steps" / "on_order_step.py").write_text(textwrap.dedent(ON_ORDER))
        written: list[str] = []
        for n in range(100):
            if [e for e in events(r, keys, "config.reloaded") if e.data.get("ok")]:
                break
            watched = r.sismember(keys.state_watched, "orders")
            store.set("orders", f"d{n}", 1)
            if watched:
                written.append(f"d{n}")
            time.sleep(0.3)
        assert written, "no change was made while the reload ran"
        store.set("orders", "after", 1)
        expected = {*written, "after"}

        def seen() -> set[str]:
            return {k.decode() for k in r.hkeys(keys.state_group("seen"))}

        wait_for(lambda: expected <= seen(), timeout=40, what=f"every change fired OnOrder (seen {sorted(seen())})")
    finally:
        run.stop()


def test_a_worker_that_cannot_stop_does_not_hold_a_reload_for_good(tmp_path, r, keys, redis_url):
    """Given two worker processes and one of them stalled (SIGSTOP), when a step file is saved, then the reload
    kills the stalled one once `shutdown_timeout` and its grace have passed, reloads (`config.reloaded` ok), and
    the new code handles the messages after it, instead of waiting on that process for ever."""
    import os
    import signal

    from ..helpers import pid_alive, wait_stopped, worker_pids

    make_project(
        tmp_path,
        {"job_step.py": V1},
        "server:\n  port: 0\nworkers:\n  processes: 2\n  shutdown_timeout: 1\n",
        redis_url=redis_url,
    )
    run = start_cli(tmp_path, "--no-ui", "--reload")
    stalled = None
    try:
        wait_for(lambda: len(worker_pids(r, keys)) == 2, timeout=30, what="both workers up")
        stalled = sorted(worker_pids(r, keys))[0]
        os.kill(stalled, signal.SIGSTOP)
        wait_stopped(stalled)
        (tmp_path / "steps" / "job_step.py").write_text(textwrap.dedent(V1).replace("VERSION = 1", "VERSION = 2"))
        wait_for(lambda: [e for e in events(r, keys, "config.reloaded") if e.data.get("ok")], timeout=30, what="the reload")
        assert not pid_alive(stalled)
        assert [e for e in events(r, keys, "log") if "did not stop within 6 s of the reload" in str(e.data.get("message"))]
        for i in range(6):
            assert httpx.post(f"{run.url}/jobs", json={"k": f"after{i}"}).status_code == 202
        version = lambda k: (json.loads(r.hget(keys.state_group("jobs"), k) or "null") or {}).get("version")  # noqa: E731
        wait_for(lambda: all(version(f"after{i}") == 2 for i in range(6)), timeout=30, what="the new code on every worker")
    finally:
        if stalled is not None and pid_alive(stalled):
            os.kill(stalled, signal.SIGCONT)
        run.stop()
