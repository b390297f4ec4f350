"""Clock skew between hosts, simulated by shifting each child process's wall clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ..checker import EFFECT_STEP, check
from ..helpers import TESTS, events, make_project, wait_for

pytestmark = pytest.mark.slow
SHIM = str(TESTS / "clockshim")


def spawn(cfg, args: list[str], offset_s: float) -> subprocess.Popen:
    env = dict(
        os.environ, III_TEST_CLOCK_OFFSET_S=str(offset_s), PYTHONPATH=os.pathsep.join([SHIM, os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.Popen(
        [sys.executable, "-m", "iii_console", *args, "--redis", cfg.redis.url],
        cwd=cfg.project_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_the_shim_really_skews_a_child_clock():
    env = dict(os.environ, III_TEST_CLOCK_OFFSET_S="-30", PYTHONPATH=SHIM)
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=env, capture_output=True, text=True)
    assert abs(float(out.stdout) - (time.time() - 30)) < 5


def test_skewed_worker_clocks_do_not_make_healthy_workers_look_dead(project, producer, r, keys):
    cfg, steps = project(
        {"effect_step.py": EFFECT_STEP}, "workers:\n  heartbeat_interval: 0.2\n  heartbeat_timeout: 1.0\n  sweep_interval: 0.2\n"
    )
    procs = [spawn(cfg, ["--no-ui", "--role", "worker"], -8.0), spawn(cfg, ["--no-ui", "--role", "worker"], +8.0)]
    try:
        wait_for(lambda: r.hlen(keys.workers) == 2, timeout=20, what="two skewed workers up")
        p = producer(cfg, steps)
        sent = set()
        for i in range(40):  # long handlers: any false "dead" verdict would steal them mid-run
            p.enqueue("chaos", {"key": f"s{i}", "redis": cfg.redis.url, "work_ms": 400}, trace_id=f"s{i}")
            sent.add(f"s{i}")
        wait_for(lambda: r.llen("chaos:effects") == 40, timeout=60, what="all processed")
        report = check(r, keys, sent)
        assert report.lost == 0 and report.duplicate_executions == 0, report.table()
        assert not [e for e in events(r, keys, "worker.stopped") if e.data.get("reason") == "heartbeat lost"]
    finally:
        for pr in procs:
            pr.send_signal(signal.SIGTERM)
            pr.wait(30)


TICKER = """
from iii_console import Step, cron
config = Step(name="Ticker", triggers=[cron("* * * * * *")])
def handler(tick, ctx):
    ctx.state.update("ticks", "Ticker", [{"type": "increment", "path": str(tick.scheduled_ms)}])
"""


def test_three_skewed_schedulers_with_a_kill_enqueue_each_tick_exactly_once(tmp_path, redis_url, r, keys):
    cfg = make_project(tmp_path, {"ticker_step.py": TICKER}, "", redis_url=redis_url)
    worker = spawn(cfg, ["--no-ui", "--role", "worker"], 0)
    scheds = [spawn(cfg, ["--no-ui", "--role", "scheduler"], off) for off in (-0.5, 0.0, 0.5)]
    try:
        wait_for(lambda: len(events(r, keys, "cron.fired")) >= 3, timeout=30, what="ticks firing")
        scheds[2].kill()  # the one whose clock runs ahead, so it was winning the ticks
        scheds[2].wait()
        first_after_kill = time.time() * 1000
        wait_for(
            lambda: [e for e in events(r, keys, "cron.fired") if e.data["scheduled_ms"] > first_after_kill + 2000],
            timeout=30,
            what="ticks keep firing after the kill",
        )
    finally:
        for pr in scheds[:2]:
            pr.send_signal(signal.SIGTERM)
            pr.wait(30)
    fired = sorted(e.data["scheduled_ms"] for e in events(r, keys, "cron.fired"))
    assert len(fired) == len(set(fired)), "a tick was enqueued twice"
    # No tick skipped between the first and the last (one per second).
    assert fired == list(range(fired[0], fired[-1] + 1, 1000))
    wait_for(
        lambda: len(json.loads(r.hget(keys.state_group("ticks"), "Ticker") or "{}")) == len(fired),
        timeout=20,
        what="every tick ran",
    )
    runs = json.loads(r.hget(keys.state_group("ticks"), "Ticker"))
    assert set(runs.values()) == {1}
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
