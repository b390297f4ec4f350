"""A stop that cannot hang: its deadline (``workers.shutdown_timeout`` + ``hardstop.GRACE_S``) with Redis
frozen, and a second Ctrl+C. Either way the process says where it was and exits 1, and what its workers
held runs again in the next run."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import redis

from iii_console.core.discovery import discover
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer
from iii_console.runtime.hardstop import FORCED_EXIT, GRACE_S

from ..helpers import events, make_project, pid_alive, runs, start_cli, wait_for, worker_pids

pytestmark = pytest.mark.slow

SLOW = """
import time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("slow")])
def handler(data, ctx):
    ctx.state.update("runs", "Slow", [{"type": "increment", "path": data["k"]}])
    time.sleep(data["sleep"])
"""

CONFIG = """
workers:
  shutdown_timeout: {timeout}
  heartbeat_interval: 0.5
  heartbeat_timeout: 3
  sweep_interval: 0.5
"""


def _runs_again_in_the_next_run(tmp_path, client, keys: Keys, trace: str) -> None:
    """A new run sweeps the forced-out worker (its heartbeat entry stayed) and runs its message to the end
    (at once this time: the sleep comes from the data, so it is shortened in place)."""
    body_key = f"{keys.dramatiq_namespace}:slow--Slow--normal.msgs"
    [(rid, body)] = client.hgetall(body_key).items()
    short = re.sub(rb'"sleep": ?\d+', b'"sleep":0', body)
    assert short != body, body
    client.hset(body_key, rid, short)
    nxt = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        wait_for(lambda: runs(client, keys, "Slow").get("k") == 2, timeout=30, what="the held message to run again")
        wait_for(
            lambda: [e for e in events(client, keys, "message.processed") if e.trace_id == trace],
            timeout=30,
            what="it processed",
        )
        assert [e for e in events(client, keys, "message.redelivered") if e.trace_id == trace]
    finally:
        assert nxt.stop() == 0


def test_a_stop_with_redis_frozen_ends_by_its_deadline_and_the_next_run_recovers(tmp_path, producer):
    """Given a worker running a handler and Redis frozen (SIGSTOP: connections stay open, nothing answers), when the
    run gets SIGTERM, then it exits 1 by shutdown_timeout + GRACE_S, saying the stop did not end and where its threads
    were; once Redis is back, the next run runs the held message again and it is processed."""
    keys = Keys()
    server = RedisServer(tmp_path / "redis", appendonly=True, extra=["--appendfsync", "always"]).start()
    assert server.proc is not None
    frozen = False
    cfg = make_project(tmp_path, {"slow_step.py": SLOW}, CONFIG.format(timeout=1), redis_url=server.url)
    client = redis.Redis.from_url(server.url)
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        wait_for(lambda: len(worker_pids(client, keys)) == 1, timeout=30, what="the worker up")
        producer(cfg, discover(cfg.steps_path)).enqueue("slow", {"k": "k", "sleep": 2}, trace_id="t-held")
        wait_for(lambda: runs(client, keys, "Slow").get("k") == 1, what="the handler to start")
        os.kill(server.proc.pid, signal.SIGSTOP)
        frozen = True
        t0 = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        code = run.proc.wait(1 + GRACE_S + 20)
        took = time.monotonic() - t0
        said = "".join(run.lines)
        assert code == FORCED_EXIT, said
        assert took < 1 + GRACE_S + 8, (took, said)
        assert f"the stop did not end within {1 + GRACE_S:g} s; stopping now" in said, said
        assert "Where its threads were:" in said and 'File "' in said, said
        os.kill(server.proc.pid, signal.SIGCONT)
        frozen = False
        _runs_again_in_the_next_run(tmp_path, client, keys, "t-held")
    finally:
        if frozen:
            os.kill(server.proc.pid, signal.SIGCONT)
        run.stop()
        client.close()
        server.stop()


def test_a_second_ctrl_c_stops_at_once_and_the_next_run_runs_what_it_held(tmp_path, redis_url, r, producer):
    """Given a worker draining a 60 s handler after a Ctrl+C (the terminal signals the supervisor and its workers
    alike), when Ctrl+C comes again, then everything exits 1 within seconds, saying so; the next run runs the held
    message again and it is processed."""
    keys = Keys()
    cfg = make_project(tmp_path, {"slow_step.py": SLOW}, CONFIG.format(timeout=120), redis_url=redis_url)
    run = start_cli(tmp_path, "--no-ui", "--role", "worker")
    try:
        wait_for(lambda: len(worker_pids(r, keys)) == 1, timeout=30, what="the worker up")
        [worker] = worker_pids(r, keys)
        producer(cfg, discover(cfg.steps_path)).enqueue("slow", {"k": "k", "sleep": 60}, trace_id="t-held")
        wait_for(lambda: runs(r, keys, "Slow").get("k") == 1, what="the handler to start")

        def ctrl_c() -> None:  # what a terminal does: SIGINT to every process of the job
            for pid in (run.proc.pid, worker):
                os.kill(pid, signal.SIGINT)

        ctrl_c()
        wait_for(lambda: any("stopping (draining" in line for line in run.lines), what="the drain to begin")
        time.sleep(1.0)
        assert run.proc.poll() is None  # draining: the handler has a minute to go
        t0 = time.monotonic()
        ctrl_c()
        code = run.proc.wait(20)
        said = "".join(run.lines)
        assert code == FORCED_EXIT, said
        assert time.monotonic() - t0 < 5, said
        assert "a second signal; stopping now" in said, said
        wait_for(lambda: not pid_alive(worker), timeout=5, what="the worker process gone")
        _runs_again_in_the_next_run(tmp_path, r, keys, "t-held")
    finally:
        run.stop()


#: Runs long on its first delivery only (counted in state), so its redelivery ends at once.
LONG_ONCE = """
import time
from iii_console import Step, queue
config = Step(name="Slow", triggers=[queue("jobs")])
def handler(data, ctx):
    ctx.state.update("runs", "Slow", [{"type": "increment", "path": data["k"]}])
    if ctx.state.get("runs", "Slow")[data["k"]] == 1:
        time.sleep(8)
"""


def test_a_topic_whose_dramatiq_stop_does_not_end_is_left_behind_and_nothing_is_lost(project, runtime, producer, r, keys, capfd):
    """Given a worker whose topic's Dramatiq stop never returns (held here on an event: a consumer stuck in a
    call that does not time out), when the worker stops, then it goes on without that topic after shutdown_timeout
    + STOP_MARGIN_S, says on stderr where its threads were, gives back what it held (``message.redelivered``) and
    leaves its heartbeat entry for the sweep (a fetch still under way may bring more in); the next worker runs
    the message to the end, and the first handler's late end changes nothing."""
    import threading

    from iii_console.runtime.worker import STOP_MARGIN_S

    cfg, steps = project({"slow_step.py": LONG_ONCE}, CONFIG.format(timeout=1))
    rt = runtime(cfg, steps)
    producer(cfg, steps).enqueue("jobs", {"k": "k"}, trace_id="t-held")
    wait_for(lambda: runs(r, keys, "Slow").get("k") == 1, what="the handler to start")
    [worker] = rt.workers.values()
    release = threading.Event()
    stop = worker.stop

    def hung_stop(timeout: int) -> None:
        release.wait(60)
        stop(timeout=timeout)

    worker.stop = hung_stop  # type: ignore[method-assign]
    try:
        t0 = time.monotonic()
        rt.stop()
        took = time.monotonic() - t0
    finally:
        release.set()
    err = capfd.readouterr().err
    assert f"the stop of jobs did not end within {1 + STOP_MARGIN_S:g} s; going on without it" in err, err
    assert "thread iii-stop-jobs:" in err and "hung_stop" in err, err
    assert 1 + STOP_MARGIN_S <= took < 1 + STOP_MARGIN_S + 8, took
    back = [e for e in events(r, keys, "message.redelivered") if e.trace_id == "t-held"]
    assert [e.data["reason"] for e in back] == ["abandoned at shutdown"], back
    assert rt.worker_id.encode() in r.hkeys(keys.workers)  # left for the sweep
    runtime(cfg, steps)  # sweeps it once its heartbeat is 3 s old, and runs what it finds
    wait_for(lambda: runs(r, keys, "Slow").get("k") == 2, timeout=30, what="the message run again")
    processed = lambda: [e for e in events(r, keys, "message.processed") if e.trace_id == "t-held"]  # noqa: E731
    wait_for(processed, timeout=30, what="it processed")
    # The first handler ends later; its message is no longer that worker's, so its settle changes nothing.
    wait_for(lambda: not any(t.is_alive() for t in worker.workers), timeout=30, what="the abandoned handler to end")
    time.sleep(0.5)
    assert len(processed()) == 1 and runs(r, keys, "Slow")["k"] == 2
    ns = keys.dramatiq_namespace
    assert r.llen(f"{ns}:jobs--Slow--normal") == 0
    assert not any(r.scard(k) for k in r.scan_iter(match=f"{ns}:__acks__.*"))
