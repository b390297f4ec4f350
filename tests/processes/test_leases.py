"""``ctx.lock``: leases with fencing tokens, and ``iii-console cron run``, on real Redis with real workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from iii_console import LockLost, LockTaken
from iii_console.core.lease import Leases

from ..helpers import events, wait_for

NIGHTLY = """
import json, time
from iii_console import LockLost, LockTaken, Step, queue
config = Step(name="Nightly", triggers=[queue("nightly")])
def handler(job, ctx):
    try:
        lease = ctx.lock("nightly-report", ttl_ms=job["ttl"])
    except LockTaken:
        ctx.state.set("log", job["name"], {"taken": True})
        return
    time.sleep(job["work"])
    out = {"token": lease.token}
    try:
        lease.fence("report-file")
        out["wrote"] = True
    except LockLost as exc:
        out["refused"] = str(exc)
    out["released"] = lease.release()
    ctx.state.set("log", job["name"], out)
"""


def log(r, keys, name):
    raw = r.hget(keys.state_group("log"), name)
    return json.loads(raw) if raw else None


def test_a_lease_lost_to_expiry_is_refused_by_the_fencing_token(project, runtime, producer, r, keys):
    cfg, steps = project({"nightly_step.py": NIGHTLY})
    runtime(cfg, steps, threads=4)
    p = producer(cfg, steps)
    p.enqueue("nightly", {"name": "slow", "ttl": 300, "work": 1.0}, trace_id="t1")  # outlives its lease
    time.sleep(0.1)
    p.enqueue("nightly", {"name": "busy", "ttl": 300, "work": 0}, trace_id="t2")  # while slow holds it
    time.sleep(0.6)
    p.enqueue("nightly", {"name": "next", "ttl": 5000, "work": 0}, trace_id="t3")  # after slow's lease expired
    wait_for(lambda: log(r, keys, "slow") and log(r, keys, "next") and log(r, keys, "busy"), what="three runs")
    slow, nxt = log(r, keys, "slow"), log(r, keys, "next")
    assert log(r, keys, "busy") == {"taken": True}
    assert nxt["token"] > slow["token"] and nxt["wrote"] and nxt["released"]
    assert "older than the last writer of 'report-file'" in slow["refused"] and slow["released"] is False


def test_a_holder_whose_lease_was_taken_over_is_refused_at_fence_before_its_successor_fences(r, keys, redis_url):
    """Given a lease that expired and was taken by a second holder who has not written yet, when the first holder
    fences the resource, it is refused (a newer lease of that name exists), and the successor's fence then passes."""
    import asyncio

    import redis.asyncio as aredis

    from iii_console.core.lease import AsyncLeases

    leases = Leases(r, keys)
    first = leases.acquire("export", 100)
    time.sleep(0.2)
    second = leases.acquire("export", 5000)
    with pytest.raises(LockLost, match="later holder"):
        first.fence("exports/today")
    second.fence("exports/today")
    with pytest.raises(LockLost):
        first.fence("exports/today")

    async def async_holder() -> None:
        client = aredis.Redis.from_url(redis_url)
        try:
            aleases = AsyncLeases(client, keys)
            late = await aleases.acquire("export-async", 100)
            await asyncio.sleep(0.2)
            await aleases.acquire("export-async", 5000)
            with pytest.raises(LockLost, match="later holder"):
                await late.fence("exports/async")
        finally:
            await client.aclose()

    asyncio.run(async_holder())
    # Not taken over: a holder whose lease expired with no one after it may still fence.
    alone = leases.acquire("export-alone", 100)
    time.sleep(0.2)
    alone.fence("exports/alone")


def test_leases_check_extend_and_refuse_bad_names(r, keys):
    leases = Leases(r, keys)
    with leases.acquire("job:1", 200) as lease:
        lease.check()
        lease.extend(5000)
        time.sleep(0.3)
        lease.check()  # extended: still held
        with pytest.raises(LockTaken):
            leases.acquire("job:1", 100)
    again = leases.acquire("job:1", 100)  # released at the end of the with
    assert again.token == lease.token + 1
    time.sleep(0.2)
    with pytest.raises(LockLost):
        again.check()
    with pytest.raises(LockLost):
        again.extend(100)
    for bad in (("", 100), ("a b", 100), ("ok", 0), ("ok", 1.5)):
        with pytest.raises(ValueError):
            leases.acquire(*bad)


TICK = """
from iii_console import Step, cron
config = Step(name="Cleanup", triggers=[cron("0 3 * * *")])
def handler(tick, ctx):
    ctx.state.set("ticks", ctx.message_id, {"manual": tick.manual, "trigger_manual": ctx.trigger.get("manual")})
"""


def test_cron_run_fires_a_cron_step_now_marked_manual(project, runtime, r, keys, redis_url):
    cfg, steps = project({"cleanup_step.py": TICK})
    runtime(cfg, steps)
    cmd = [sys.executable, "-m", "iii_console", "cron", "run", "Cleanup", "--json", "--redis", redis_url]
    res = subprocess.run(cmd, cwd=cfg.project_dir, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    [mid] = out["message_ids"]
    wait_for(lambda: r.hget(keys.state_group("ticks"), mid), what="the tick ran")
    assert json.loads(r.hget(keys.state_group("ticks"), mid)) == {"manual": True, "trigger_manual": True}
    fired = wait_for(lambda: events(r, keys, "cron.fired"), what="cron.fired")
    assert fired[0].data["manual"] is True and fired[0].trace_id == out["trace_id"]
    bad = subprocess.run(
        [*cmd[:5], "Nope", "--redis", redis_url], cwd=cfg.project_dir, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "no cron step named 'Nope' (cron steps: Cleanup)" in bad.stderr


def test_a_manual_tick_is_written_on_the_queue_the_adapter_names():
    """The core writes the tick without the queue adapter: its queue and actor names must be the adapter's."""
    from iii_console.adapters.queue.names import CRON_TOPIC, Subscription
    from iii_console.core import cronrun

    sub = Subscription(CRON_TOPIC, "Cleanup")
    assert cronrun.CRON_TOPIC == CRON_TOPIC
    assert (sub.queue("high"), sub.actor("high")) == ("_cron--Cleanup--high", "Cleanup:_cron:high")
