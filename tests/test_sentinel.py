"""Redis under Sentinel: the app runs on a ``redis+sentinel://`` URL and carries on, on the promoted replica, after its
primary is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from iii_console.core.config import redis_url_problem
from iii_console.core.keys import Keys
from iii_console.runtime.services import redis_client

from .helpers import make_project, wait_for
from .sentinelset import SentinelSet, sentinel_problem

POST = """
from iii_console import Step, http
config = Step(name="Post", triggers=[http("POST", "/jobs")], enqueues=["jobs"])
def handler(req, ctx):
    ctx.enqueue("jobs", req.body)
    return {"status": 202, "body": {}}
"""
RECORD = """
from iii_console import Step, queue
config = Step(name="Rec", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "Rec", [{"type": "increment", "path": data["k"]}])
"""


@pytest.mark.parametrize(
    "url,problem",
    [
        ("redis+sentinel://127.0.0.1:26379,10.0.0.2:26380/mymaster/2", None),
        ("redis+sentinel://:secret@h1:26379/mymaster?sentinel_password=s2", None),
        ("redis+sentinel://h1:26379", "no service name"),
        ("redis+sentinel://h1:port/mymaster", "bad sentinel port"),
        ("redis+sentinel://h1:26379/mymaster/zero", "DB a number"),
        ("redis+sentinel://h1:26379/mymaster?timeout=1", "unknown option 'timeout'"),
    ],
)
def test_sentinel_urls_are_checked_like_redis_urls(url, problem):
    got = redis_url_problem(url)
    assert (got is None) if problem is None else (problem in (got or "")), got


@pytest.mark.slow
def test_the_app_carries_on_on_the_promoted_replica_after_its_primary_is_killed(tmp_path):
    """Given iii-console on a Sentinel URL (a primary, a replica, three sentinels), when the primary is SIGKILLed, then
    HTTP answers 202 again once the replica is promoted, /health names the new primary, and messages posted after the
    failover are processed."""
    problem = sentinel_problem()
    if problem:
        pytest.skip(problem)
    s = SentinelSet(tmp_path / "sentinel").start()
    proc = None
    try:
        make_project(tmp_path / "app", {"post_step.py": POST, "rec_step.py": RECORD})
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iii_console",
                "--no-ui",
                "--port",
                "0",
                "--redis",
                s.url,
                "--config",
                str(tmp_path / "app" / "iii-config.yaml"),
            ],
            cwd=tmp_path / "app",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        banner = proc.stderr.readline()  # type: ignore[union-attr]
        assert "running" in banner, banner
        url = banner.split(" on ", 1)[1].split(" with", 1)[0]
        http = httpx.Client(base_url=url, timeout=10)
        client = redis_client(s.url)
        keys = Keys()

        def runs() -> dict[str, int]:
            try:
                raw = client.hget(keys.state_group("runs"), "Rec")
            except Exception:
                return {}
            return json.loads(raw) if raw else {}

        assert http.post("/jobs", json={"k": "before"}).status_code == 202
        wait_for(lambda: runs().get("before") == 1, what="the first message")
        assert http.get("/health").json()["redis"]["primary"] == f"127.0.0.1:{s.primary_port}"

        s.kill(s.primary_port)
        t0 = time.monotonic()
        codes: list[int] = []

        timeline: list[str] = []

        def accepted() -> bool:
            t = time.monotonic()
            try:
                resp = http.post("/jobs", json={"k": "after"})
                code = resp.status_code
            except httpx.HTTPError as exc:
                timeline.append(f"{t - t0:.1f}s {type(exc).__name__} after {time.monotonic() - t:.1f}s")
                return False
            codes.append(code)
            if not timeline or not timeline[-1].endswith(f"{code} {resp.text[:60]}"):
                timeline.append(f"{t - t0:.1f}s took {time.monotonic() - t:.1f}s {code} {resp.text[:60]}")
            return code == 202

        # Typically 2-3 s; a failed election is retried after 2 x failover-timeout.
        try:
            wait_for(accepted, timeout=60, interval=0.1, what="HTTP to accept again after the failover")
        except AssertionError:
            views = []
            for port in s.sentinel_ports:
                try:
                    views.append(s.sentinel(port).sentinel_get_master_addr_by_name("iiimaster"))
                except Exception as exc:
                    views.append(repr(exc))
            raise AssertionError(
                f"no 202 after the failover; answers {sorted(set(codes))}, sentinels say {views}, "
                f"replica at {s.replica_port}; server stderr: {proc.stderr.read(4000) if proc.poll() is not None else ''}"
            ) from None
        reconnect = time.monotonic() - t0
        assert set(codes) <= {202, 503}, codes  # never a 500 while the primary is away
        wait_for(lambda: runs().get("after") == 1, timeout=30, what="the message posted after the failover")
        done = time.monotonic() - t0
        health = http.get("/health").json()
        assert health["redis"]["primary"] == f"127.0.0.1:{s.replica_port}" == f"127.0.0.1:{s.primary()}"
        print(
            f"\nfailover: HTTP accepted again {reconnect:.2f} s after the kill (sentinel down-after 1 s), "
            f"processed by the worker at {done:.2f} s; answers meanwhile: {sorted(set(codes))}"
        )
        if reconnect > 5:
            print("\n".join(timeline))
        http.close()
        client.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        s.stop()
