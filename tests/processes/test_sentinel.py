"""Redis under Sentinel: the app runs on a ``redis+sentinel://`` URL and carries on, on the promoted replica, after its
primary is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from iii_console.core.config import redis_url_problem
from iii_console.core.keys import Keys
from iii_console.runtime.services import redis_client

from ..helpers import make_project, wait_for
from ..sentinelset import SentinelSet, sentinel_problem

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
def _sentinel_set(tmp_path: Path) -> SentinelSet:
    """A started primary, replica and three sentinels of the test's own (skips where the binaries are missing)."""
    problem = sentinel_problem()
    if problem:
        pytest.skip(problem)
    return SentinelSet(tmp_path / "sentinel").start()


def _stop(proc: subprocess.Popen[str] | None) -> None:
    """Stop a run of :func:`_run_on` as SIGTERM does, or kill its session after 15 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _run_on(s: SentinelSet, project: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``iii-console --no-ui`` of ``project`` on the Sentinel URL of ``s`` (its own session); it and its server's URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui", "--port", "0", "--redis", s.url, *args],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    banner = proc.stderr.readline()  # type: ignore[union-attr]
    assert "running" in banner, banner
    return proc, banner.split(" on ", 1)[1].split(" with", 1)[0]


def test_the_app_carries_on_on_the_promoted_replica_after_its_primary_is_killed(tmp_path):
    """Given iii-console on a Sentinel URL (a primary, a replica, three sentinels), when the primary is SIGKILLed, then
    HTTP answers 202 again once the replica is promoted, /health names the new primary, and messages posted after the
    failover are processed."""
    s = _sentinel_set(tmp_path)
    proc = None
    try:
        make_project(tmp_path / "app", {"post_step.py": POST, "rec_step.py": RECORD})
        proc, url = _run_on(s, tmp_path / "app", "--config", str(tmp_path / "app" / "iii-config.yaml"))
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
                f"replica at {s.replica_port}; server stderr: {proc.stderr.read(4000) if proc.poll() is not None else ''}"  # type: ignore[union-attr]
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
        _stop(proc)
        s.stop()


SEEN = """
from iii_console import Step, http
config = Step(name="Seen", triggers=[http("POST", "/seen")])
async def handler(req, ctx):
    await ctx.state.set("seen", req.body["k"], 1)
    return {"status": 202, "body": {}}
"""


def test_a_graceful_failover_is_followed_and_no_accepted_write_is_lost(tmp_path):
    """Given iii-console on a Sentinel URL answering state writes, when `SENTINEL FAILOVER` promotes the replica while
    the old primary goes on answering (until the sentinels demote it, seconds later), then the server moves to the new
    primary within about a second, answers only 202 or 503 meanwhile, and every write it answered 202 for is on the new
    primary once the old one has been demoted and resynced (none lost with it)."""
    s = _sentinel_set(tmp_path)
    proc = None
    try:
        make_project(tmp_path / "app", {"seen_step.py": SEEN})
        proc, url = _run_on(s, tmp_path / "app", "--role", "server")
        http = httpx.Client(base_url=url, timeout=10)
        old, new = s.primary_port, s.replica_port
        accepted: list[str] = []
        codes: set[int] = set()
        t0 = time.monotonic()
        failed_over = None
        i = 0
        while time.monotonic() - t0 < 8:
            if failed_over is None and time.monotonic() - t0 > 1.5:
                assert s.sentinel(s.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", "iiimaster")
                failed_over = time.monotonic() - t0
            i += 1
            resp = http.post("/seen", json={"k": f"k{i}"})
            codes.add(resp.status_code)
            if resp.status_code == 202:
                accepted.append(f"k{i}")
            time.sleep(0.02)
        assert codes <= {202, 503}, codes
        assert s.primary() == new
        old_node = redis.Redis(port=old)
        wait_for(
            lambda: (
                old_node.info("replication").get("role") == "slave"
                and old_node.info("replication").get("master_link_status") == "up"
            ),
            timeout=60,
            what="the old primary demoted and resynced",
        )
        primary = redis.Redis(port=new)
        seen = {k.decode() for k in primary.hkeys(Keys().state_group("seen"))}
        lost = [k for k in accepted if k not in seen]
        assert not lost, f"{len(lost)} of {len(accepted)} accepted writes lost: {lost[:10]}"
        assert len(accepted) > 50  # it kept accepting before and after the failover
        http.close()
    finally:
        _stop(proc)
        s.stop()


@pytest.mark.anyio
async def test_the_async_sentinel_client_waits_for_a_connection_as_the_plain_one_does(tmp_path):
    """Given the async client of a Sentinel URL with 2 connections at most (the server's pool is 64), when 10 commands
    that hold a connection for 0.2 s run at once, then each waits for a connection and answers, as on a plain URL,
    instead of failing with 'Too many connections'."""
    import anyio

    from iii_console.core.redis_url import async_client_from_url

    s = _sentinel_set(tmp_path)
    try:
        for url in (s.url, f"redis://127.0.0.1:{s.primary_port}/0"):
            client = async_client_from_url(url, max_connections=2, timeout=5)
            answers: list[object] = []

            async def hold(i: int, c=client, out=answers) -> None:
                out.append(await c.blpop([f"nothing-{i}"], timeout=0.2))

            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(hold, i)
            assert answers == [None] * 10, url
            await client.aclose()
    finally:
        s.stop()


#: A writer process for the failover test: state changes, once-keys and dead-letter replays, one after another, as
#: fast as Redis answers; one line per acknowledged write (kind, id, replicas WAIT reported or -1, when, seconds taken).
WRITER = r"""
import sys, time
from pathlib import Path

import redis

from iii_console.adapters.queue.producer import Producer
from iii_console.core import replication
from iii_console.core.config import load_config
from iii_console.core.dlq import DeadLetter
from iii_console.core.replay import Replayer, ReplayError
from iii_console.core.services import Services
from iii_console.core.state import StateStore

cfg_path, wid, out_path, stop_path, n_dead, pad_bytes = sys.argv[1:7]
pad = "x" * int(pad_bytes)  # state values of some size
config = load_config(cfg_path)
svc = Services.open(config, "writer")
wait, keys, c = replication.current(), svc.keys, svc.client
state, producer = StateStore(c, keys), Producer(c, keys, config, {}, svc.emitter)
replayer = Replayer(c, keys, svc.emitter)


def dead(j):
    return DeadLetter(
        id=f"w{wid}-{j}", dlq="dead", error="x", topic="jobs", step="Rec", queue="jobs--Rec--normal",
        message={"actor_name": "Rec:jobs:normal", "args": [{"j": j}], "kwargs": {}, "options": {"topic": "jobs"}},
    )


pipe = c.pipeline(transaction=False)
for j in range(int(n_dead)):
    pipe.hset(keys.dlq_entries("dead"), f"w{wid}-{j}", dead(j).encode())
    pipe.zadd(keys.dlq("dead"), {f"w{wid}-{j}": j})
pipe.sadd(keys.dlq_names, "dead")
pipe.wait(1, 5000)
pipe.execute()
out = open(out_path, "a", buffering=1)
out.write("ready\n")
deadline, i, nd = time.monotonic() + 100, 0, 0
while time.monotonic() < deadline and not Path(stop_path).exists():
    i += 1
    kind = ("state", "once", "replay")[i % 3]
    if kind == "replay" and nd >= int(n_dead):
        kind = "state"
    t = time.monotonic()
    try:
        if kind == "state":
            ident = i
            state.set(f"w{wid}", f"k{i}", {"i": i, "pad": pad})
        elif kind == "once":
            ident = i
            producer.enqueue("nobody", {"i": i}, trace_id="t", once=keys.once(f"w{wid}:{i}"))
        else:
            ident, nd = nd, nd + 1
            replayer.replay(dead(ident))
    except (redis.RedisError, OSError, ReplayError) as exc:
        out.write(f"error {time.time():.4f} {type(exc).__name__}\n")
        time.sleep(0.02)
        continue
    acked = -1 if wait.last is None else wait.last
    out.write(f"{kind} {ident} {acked} {time.time():.4f} {time.monotonic() - t:.6f}\n")
out.close()
svc.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["wait-off", "wait-on"])
def test_writes_acknowledged_after_a_successful_wait_survive_a_failover(tmp_path, wait_replicas):
    """Given two writer processes making state changes, once-keys and dead-letter replays on a Sentinel URL, when the
    primary is SIGKILLed under that load, then after the failover: with `wait_replicas: 1` no write acknowledged after a
    successful WAIT is missing from the promoted replica; with WAIT off whatever was lost is counted. Prints the lost
    writes, the reconnect time and the cost of a write with and without WAIT."""
    import statistics

    s = _sentinel_set(tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (tmp_path / "steps").mkdir()
        cfg = tmp_path / "iii-config.yaml"
        cfg.write_text(f"redis:\n  url: {s.url}\n  wait_replicas: {wait_replicas}\n  wait_timeout_ms: 100\n")
        (tmp_path / "writer.py").write_text(WRITER)
        outs = [tmp_path / f"w{w}.log" for w in range(2)]
        stop = tmp_path / "stop"
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        for w, out in enumerate(outs):
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(tmp_path / "writer.py"), str(cfg), str(w), str(out), str(stop), "3000", "200"],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"w{w}.err", "w"),  # noqa: SIM115  (closed with the process)
                    start_new_session=True,
                )
            )

        def lines(out: Path) -> list[list[str]]:
            return [ln.split() for ln in out.read_text().splitlines()] if out.exists() else []

        wait_for(lambda: all(["ready"] in lines(o) for o in outs), timeout=30, what="the writers to start")
        wait_for(lambda: all(len(lines(o)) > 300 for o in outs), timeout=30, what="the writers to write")
        # The replica loses its link to the primary (a partition between the two) half a second before the primary
        # dies: what the primary acknowledges meanwhile reaches no replica, and the failover promotes that replica (its
        # link down for less than 10 x down-after, it is a candidate). A wrong masterauth keeps it from reconnecting.
        old, replica = redis.Redis(port=s.primary_port), redis.Redis(port=s.replica_port)
        replica.config_set("masterauth", "wrong")
        old.execute_command("CLIENT", "KILL", "TYPE", "replica")
        wait_for(lambda: old.info("replication")["connected_slaves"] == 0, timeout=10, what="the replica's link to drop")
        blip = time.time()
        time.sleep(0.5)  # the window whose writes only the primary holds
        s.kill(s.primary_port)
        killed = time.time()
        old.close()
        wait_for(lambda: s.primary() == s.replica_port, timeout=60, interval=0.2, what="the sentinels to promote the replica")

        def written_after(out: Path, t: float) -> int:
            return sum(1 for ln in lines(out) if ln[0] in ("state", "once", "replay") and float(ln[3]) > t)

        promoted = time.time()
        wait_for(lambda: all(written_after(o, promoted) >= 3 for o in outs), timeout=30, what="writes on the new primary")
        stop.touch()
        for p in procs:
            p.wait(30)

        new = redis.Redis(port=s.replica_port)
        keys = Keys()
        acked: list[tuple[int, list[str]]] = [(w, ln) for w, o in enumerate(outs) for ln in lines(o) if ln[0] != "ready"]
        writes = [(w, ln) for w, ln in acked if ln[0] != "error"]
        pipe = new.pipeline(transaction=False)
        for w, (kind, ident, *_rest) in writes:
            if kind == "state":
                pipe.hexists(keys.state_group(f"w{w}"), f"k{ident}")
            elif kind == "once":
                pipe.exists(keys.once(f"w{w}:{ident}"))
            else:  # a replay is lost when its entry is back in the store: it would be replayed again
                pipe.hexists(keys.dlq_entries("dead"), f"w{w}-{ident}")
        present = pipe.execute()
        lost = {"state": 0, "once": 0, "replay": 0}
        lost_after_wait = []
        for (w, (kind, ident, got, _ts, _took)), there in zip(writes, present):
            missing = bool(there) if kind == "replay" else not there
            if missing:
                lost[kind] += 1
                if int(got) >= 1:
                    lost_after_wait.append((w, kind, ident))
        firsts = [
            min(float(ln[3]) for ln in lines(o) if ln[0] != "error" and ln[0] != "ready" and float(ln[3]) > killed) for o in outs
        ]
        reconnect = max(firsts) - killed
        before = [float(ln[4]) * 1000 for _w, ln in writes if float(ln[3]) < killed]
        by_kind = {
            k: statistics.median([float(ln[4]) * 1000 for _w, ln in writes if ln[0] == k and float(ln[3]) < killed] or [0.0])
            for k in ("state", "once", "replay")
        }
        short = sum(1 for _w, ln in writes if int(ln[2]) == 0)
        in_blip = sum(1 for _w, ln in writes if blip <= float(ln[3]) < killed)
        print(
            f"\nfailover with wait_replicas {wait_replicas}: {len(writes)} acknowledged writes "
            f"({len(before)} before the kill, {in_blip} in the {killed - blip:.2f} s the replica was cut off), lost: {lost['state']} state changes, {lost['once']} once-keys, "
            f"{lost['replay']} replays (entry back in the dead-letter store); lost after a successful WAIT: "
            f"{len(lost_after_wait)}; writes whose WAIT came back short: {short}; both writers writing again "
            f"{reconnect:.2f} s after the kill (sentinel down-after 1 s); median write before the kill: "
            f"state {by_kind['state']:.2f} ms, once-key {by_kind['once']:.2f} ms, replay {by_kind['replay']:.2f} ms"
        )
        assert not lost_after_wait, lost_after_wait[:10]
        if wait_replicas:
            # Before the blip the replica was up: the WAITs then were answered by it (the test tested something).
            answered = [int(ln[2]) >= 1 for _w, ln in writes if float(ln[3]) < blip]
            assert len(answered) > 100 and sum(answered) > 0.9 * len(answered), (len(answered), sum(answered))
        else:
            assert all(int(ln[2]) == -1 for _w, ln in writes)  # no WAIT sent at all
        assert reconnect < 60
        new.close()
    finally:
        stop_file = tmp_path / "stop"
        stop_file.touch()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        s.stop()


@pytest.mark.parametrize(
    "redis_cfg,expected",
    [
        ("url: redis+sentinel://h1:26379/mymaster", 1),
        ("url: redis://h1:6379/0", 0),
        ("url: redis+sentinel://h1:26379/mymaster\n  wait_replicas: 0", 0),
        ("url: redis://h1:6379/0\n  wait_replicas: 2", 2),
        ("wait_replicas: 1", 1),
        ("url: redis://h1:6379/0\n  wait_replicas: -1", "redis.wait_replicas"),
        ("url: redis://h1:6379/0\n  wait_timeout_ms: 0", "redis.wait_timeout_ms"),
        ("url: redis://h1:6379/0\n  wait_timeout_ms: 5000", "redis.wait_timeout_ms"),
        ("url: redis://h1:6379/0\n  wait_replicas: many", "redis.wait_replicas"),
    ],
)
def test_wait_replicas_defaults_to_one_under_sentinel_and_bad_values_name_the_key(tmp_path, redis_cfg, expected):
    from iii_console.core.config import load_config
    from iii_console.core.errors import ConfigError

    (tmp_path / "a.yaml").write_text(f"redis:\n  {redis_cfg}\n")
    if isinstance(expected, int):
        assert load_config(tmp_path / "a.yaml", env={}).redis.effective_wait_replicas == expected
        return
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a.yaml", env={})
    assert expected in str(err.value) and "a.yaml:" in str(err.value), str(err.value)
    res = subprocess.run(
        [sys.executable, "-m", "iii_console", "config", "check", "--config", "a.yaml"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and expected in res.stdout and "Traceback" not in res.stderr, res.stdout + res.stderr


def test_a_write_whose_wait_comes_back_short_stands_and_says_so(redis_url, r, keys):
    """Given `WAIT 1` asked of a Redis without replicas, when a state change and a dead-letter replay are made, then
    both stand (written, not an error), each WAIT is counted short, and a warning `log` event says the write may not
    survive a failover."""
    from iii_console.core import replication
    from iii_console.core.emitter import Emitter, StreamSink
    from iii_console.core.state import StateStore

    from ..helpers import events

    sink = StreamSink(r, keys.events, maxlen=10_000, keys=keys)
    emitter = Emitter(sink, worker="test")
    previous = replication.current()
    wait = replication.configure(replication.ReplicaWait(1, 20, replication.emitter_report(emitter)))
    try:
        t = time.monotonic()
        StateStore(r, keys).set("orders", "o1", {"n": 1})
        took = time.monotonic() - t
        assert json.loads(r.hget(keys.state_group("orders"), "o1")) == {"n": 1}
        assert (wait.waits, wait.short, wait.last) == (1, 1, 0)
        assert took >= 0.015, took  # it did wait (for the 20 ms timeout)
        pipe = r.pipeline(transaction=False)  # the scheduler's skip claims: a pipeline with WAIT last
        pipe.set("claim-a", "skipped", nx=True)
        pipe.set("claim-a", "skipped", nx=True)
        assert wait.execute(pipe, what="claims") == [True, None] and (wait.waits, wait.short) == (2, 2)
        sink.flush()
    finally:
        replication.configure(previous)
        sink.close()
    warned = [e for e in events(r, keys, "log") if e.data.get("level") == "warning"]
    assert warned and "may not survive a failover" in warned[0].data["message"], warned
    assert "orders/o1" in warned[0].data["message"]


def test_a_guarded_write_whose_node_is_a_replica_by_its_wait_is_a_lost_primary(tmp_path):
    """Given a guarded write whose WAIT reaches a node that is a replica by then (a primary demoted by a failover
    between the write and its WAIT), when it runs, then it is a ConnectionError (the server answers 503, a queue
    handler runs again without spending an attempt), not a refused command (a 500 or a spent attempt)."""
    import redis as redis_lib

    from iii_console.core import replication
    from iii_console.core.redis_server import RedisServer

    primary = RedisServer(tmp_path / "primary", appendonly=False).start()
    replica = RedisServer(tmp_path / "replica", appendonly=False, extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    client = redis_lib.Redis.from_url(replica.url)
    try:
        wait = replication.ReplicaWait(1, 20)
        with pytest.raises(redis_lib.ConnectionError, match="the Redis primary was demoted under this write"):
            wait.command(client, "get", "k", what="state orders/o1")
        pipe = client.pipeline(transaction=False)
        pipe.get("k")
        with pytest.raises(redis_lib.ConnectionError):
            wait.execute(pipe, what="claims")
    finally:
        client.close()
        replica.stop()
        primary.stop()


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_consoles_header_names_the_primary_the_sentinels_gave(tmp_path):
    """Given a console attached through a Sentinel URL, its header names the primary in use; a plain URL's does not."""
    from ..helpers import console, started, topbar, until

    s = _sentinel_set(tmp_path)
    try:
        app = console(redis_url=s.url)
        async with app.run_test(size=(200, 40)) as pilot:
            await started(pilot)
            await until(pilot, lambda: f"primary 127.0.0.1:{s.primary_port}" in topbar(app), "the primary in the header")
        plain = console(redis_url=f"redis://127.0.0.1:{s.primary_port}/0")
        async with plain.run_test(size=(200, 40)) as pilot:
            await started(pilot)
            await until(pilot, lambda: plain.snap.polls > 0 and plain.where in topbar(plain), "the header")
            assert "primary" not in topbar(plain)
    finally:
        s.stop()


@pytest.mark.slow
def test_the_cost_of_wait_per_state_write(tmp_path):
    """Given a Sentinel set with its replica up, when state writes alternate between WAIT off and `WAIT 1 100` in
    rounds, then every waited write was acknowledged by the replica; prints p50/p95 of a write each way."""
    from iii_console.core import replication
    from iii_console.core.redis_url import client_from_url
    from iii_console.core.state import StateStore

    s = _sentinel_set(tmp_path)
    previous = replication.current()
    try:
        client = client_from_url(s.url)
        store = StateStore(client, Keys())
        off, on = replication.ReplicaWait(0), replication.ReplicaWait(1, 100)
        took: dict[str, list[float]] = {"off": [], "on": []}
        for rnd in range(6):  # alternated, so the machine's other load weighs on both alike
            for name, wait in (("off", off), ("on", on)):
                replication.configure(wait)
                for i in range(300):
                    t = time.perf_counter()
                    store.set("bench", f"{name}{rnd}-{i}", {"i": i})
                    took[name].append((time.perf_counter() - t) * 1000)
        client.close()
    finally:
        replication.configure(previous)
        s.stop()
    assert on.waits == 1800 and on.short <= 18, (on.waits, on.short)  # the replica answered (nearly) every WAIT
    assert off.waits == 0
    p = {k: (sorted(v)[len(v) // 2], sorted(v)[int(len(v) * 0.95)]) for k, v in took.items()}
    print(
        f"\nstate write: WAIT off p50 {p['off'][0]:.3f} ms, p95 {p['off'][1]:.3f} ms; "
        f"WAIT 1 p50 {p['on'][0]:.3f} ms, p95 {p['on'][1]:.3f} ms ({on.short} of {on.waits} WAITs short)"
    )


@pytest.mark.anyio
async def test_async_guarded_writes_wait_on_their_own_connection_beside_the_autopipe(redis_url, r, keys):
    """Given the server's async store and producer on an autopipe, with `WAIT 1 20` asked of a Redis without replicas,
    when a state change and a dedup-keyed enqueue are made, then both are written and both WAITed (short), and with
    WAIT off they go through the autopipe and send no WAIT. Each on a Redis that has lost its scripts (a restart,
    a SCRIPT FLUSH): the guarded enqueue's script, queued on its own pipeline, used never to be loaded again."""
    from iii_console.adapters.queue.producer import AsyncProducer
    from iii_console.core import replication
    from iii_console.core.autopipe import AutoPipeline
    from iii_console.core.config import Config
    from iii_console.core.emitter import null_emitter
    from iii_console.core.redis_url import async_client_from_url
    from iii_console.core.state import AsyncStateStore

    aclient = async_client_from_url(redis_url)
    pipe = AutoPipeline(aclient)
    store = AsyncStateStore(aclient, keys, autopipe=pipe)
    producer = AsyncProducer(aclient, keys, Config(), {}, null_emitter(), autopipe=pipe)
    previous = replication.current()
    wait = replication.configure(replication.ReplicaWait(1, 20))
    try:
        r.script_flush()
        await store.set("orders", "a1", 1)
        await producer.enqueue("nobody", {"x": 1}, trace_id="t", dedup_key="d1")
        assert (wait.waits, wait.short) == (2, 2)
        off = replication.configure(replication.ReplicaWait(0))
        r.script_flush()
        await store.set("orders", "a2", 2)
        await producer.enqueue("nobody", {"x": 2}, trace_id="t", dedup_key="d2")
        assert off.waits == 0 and wait.waits == 2
    finally:
        replication.configure(previous)
        await aclient.aclose()
    assert json.loads(r.hget(keys.state_group("orders"), "a1")) == 1
    assert json.loads(r.hget(keys.state_group("orders"), "a2")) == 2
    assert r.exists(keys.dedup("nobody", "d1")) and r.exists(keys.dedup("nobody", "d2"))
