"""A 3-node RabbitMQ cluster of the test's own (``rabbit_cluster``) under faults: the leader of the quorum queue in
use killed under load, then a majority of the nodes stopped and brought back. Our processes get every node's URL
(``;``-separated in ``rabbitmq.url``) and are never restarted. Every message answered ``202`` must take effect
(the checker of ``tests/checker.py``); duplicates are counted and printed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..checker import EFFECT_STEP, check
from ..helpers import make_project, wait_for

POST = """
from iii_console import Step, http
config = Step(name="Post", triggers=[http("POST", "/chaos")], enqueues=["chaos"])
def handler(req, ctx):
    ctx.enqueue("chaos", req.body)
    return {"status": 202, "body": {}}
"""

pytestmark = pytest.mark.slow


class Poster:
    """Posts keyed messages to ``/chaos`` one after another from a thread; records each answer."""

    def __init__(self, url: str, redis_url: str):
        self.url, self.redis_url = url, redis_url
        self.accepted: dict[str, float] = {}  # key -> when its 202 came
        self.sent_at: dict[str, float] = {}  # key -> when it was posted
        self.attempted: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.slowest = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def post(self, client: httpx.Client, key: str) -> httpx.Response | None:
        self.attempted.add(key)
        t0 = self.sent_at[key] = time.monotonic()
        try:
            resp = client.post(f"{self.url}/chaos", json={"key": key, "redis": self.redis_url, "work_ms": 5})
        except httpx.HTTPError:
            self.statuses[-1] = self.statuses.get(-1, 0) + 1
            return None
        self.slowest = max(self.slowest, time.monotonic() - t0)
        self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        if resp.status_code == 202:
            self.accepted[key] = time.monotonic()
        return resp

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                self.post(client, f"k{i}")
                i += 1

    def accepted_after(self, t: float) -> list[str]:
        """The keys posted after ``t`` and answered 202, in order."""
        return [k for k in list(self.accepted) if self.sent_at[k] > t]


def drain(proc: Any, lines: list[str]) -> None:
    """Read a process's stderr so its warnings never fill the pipe and block it."""

    def run() -> None:
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=run, daemon=True).start()


def start_app(tmp_path: Path, cluster: Any, redis_url: str, prefix: str, procs: Any) -> tuple[str, list[str]]:
    make_project(
        tmp_path / "app",
        {"effect_step.py": EFFECT_STEP, "post_step.py": POST},
        f"broker: rabbitmq\nrabbitmq:\n  url: '{cluster.url}'\n  prefix: {prefix}\nqueues:\n  chaos:\n    max_deliveries: 50\n",
        redis_url=redis_url,
    )
    app = procs(tmp_path / "app", "--port", "0", "--processes", "1", "--threads", "4")
    lines: list[str] = []
    drain(app, lines)
    return app.banner.split(" on ", 1)[1].split(" with", 1)[0], lines


def done(r: Any) -> set[str]:
    return {k.decode() for k in r.smembers("chaos:done")}


def test_killing_the_quorum_queues_leader_under_load_loses_no_confirmed_message(
    rabbit_cluster, rabbit_prefix, procs, r, keys, redis_url, tmp_path
):
    """Given a 3-node cluster, a server and a worker process given every node's URL, and a client posting without
    pause, when the node leading the step's quorum queue is killed -9, then publishing and processing resume on the
    survivors without restarting anything, no answer is a 500, and every message answered 202 takes effect."""
    url, lines = start_app(tmp_path, rabbit_cluster, redis_url, rabbit_prefix, procs)
    poster = Poster(url, redis_url)
    poster.thread.start()
    try:
        wait_for(lambda: len(poster.accepted) >= 50 and len(done(r)) >= 20, timeout=60, what="load under way")
        queue = f"{rabbit_prefix}.chaos--Effect--normal"
        leader = rabbit_cluster.leader(queue)
        t_kill = time.monotonic()
        leader.kill()
        wait_for(lambda: poster.accepted_after(t_kill), timeout=60, what="a 202 for a post sent after the kill")
        resumed = poster.accepted[poster.accepted_after(t_kill)[0]] - t_kill

        def effect_after() -> bool:
            return bool(set(poster.accepted_after(t_kill)) & done(r))

        wait_for(effect_after, timeout=60, interval=0.02, what="a message accepted after the kill to take effect")
        processed = time.monotonic() - t_kill
        wait_for(lambda: len(poster.accepted_after(t_kill)) >= 100, timeout=90, what="100 messages accepted after the kill")
    finally:
        poster.stop.set()
        poster.thread.join(90)
    accepted = set(poster.accepted)
    wait_for(lambda: accepted <= done(r), timeout=90, what="every accepted message's effect")
    survivor = next(n for n in rabbit_cluster.nodes if n is not leader)
    new_leader = rabbit_cluster.leader(queue, via=survivor)
    report = check(r, keys, accepted)
    print(
        f"\n{report.table()}\nstatuses {poster.statuses}; leader {leader.name} -> {new_leader.name}; "
        f"first 202 to a post sent after the kill at {resumed:.2f} s; one of those took effect by {processed:.2f} s"
    )
    assert new_leader is not leader
    assert (report.lost, report.duplicated_effects) == (0, 0)
    # An effect of a key never answered 202 is a publish whose confirm was lost with the node: at-least-once.
    assert set(done(r)) <= poster.attempted
    assert set(poster.statuses) <= {202, 503}, (poster.statuses, "".join(lines[-30:]))


def test_a_cluster_without_a_majority_answers_503_and_resumes_when_its_nodes_return(
    rabbit_cluster, rabbit_prefix, procs, r, keys, redis_url, tmp_path
):
    """Given a 3-node cluster and our processes on every node's URL, when 2 of the 3 nodes go (one killed -9, one stopped), then a post is
    answered 503 with Retry-After within a bound (no confirm can come: the quorum queue has no majority), never 500
    and never a hang; when the two come back, posts are accepted and processed again without restarting our
    processes, and nothing answered 202 before, during or after is lost. ``/health`` answers 503 meanwhile (its
    probe's confirmed publish gets no confirm either), and 200 again once the nodes are back."""
    url, lines = start_app(tmp_path, rabbit_cluster, redis_url, rabbit_prefix, procs)
    poster = Poster(url, redis_url)
    with httpx.Client(timeout=60) as client:
        for i in range(20):
            assert poster.post(client, f"before{i}").status_code == 202  # type: ignore[union-attr]
        wait_for(lambda: len(done(r)) == 20, timeout=60, what="the first 20 to take effect")
        first, second, _survivor = rabbit_cluster.nodes
        first.kill()  # kill -9: no goodbye to the clients or the peers
        second.stop()  # rabbitmqctl stop: the node closes its clients' connections and leaves
        answers = []
        for i in range(3):
            t0 = time.monotonic()
            resp = poster.post(client, f"minority{i}")
            answers.append((resp.status_code if resp else None, resp.headers.get("retry-after") if resp else None))
            took = time.monotonic() - t0
            assert resp is not None and resp.status_code == 503, (answers, "".join(lines[-30:]))
            assert resp.headers.get("retry-after"), answers
            assert took < 20, f"answered after {took:.1f} s"
        # The survivor still takes connections; /health's confirmed publish to its quorum queue gets no confirm
        # (or a nack). Each probe is bounded: the one after a dropped probe connection too (the cache lasts 2 s).
        for probe in range(2):
            if probe:
                time.sleep(2.5)
            t0 = time.monotonic()
            down = client.get(f"{url}/health")
            took = time.monotonic() - t0
            health = down.json().get("rabbitmq")
            assert down.status_code == 503 and down.headers.get("retry-after"), (down.status_code, down.text)
            assert health["ok"] is False and health["error"] in ("ConfirmTimeout", "NackError"), health
            assert took < 8, f"/health answered after {took:.1f} s"
        t_back = time.monotonic()
        first.launch()
        second.launch()
        first.wait_started(90)
        second.wait_started(90)
        rabbit_cluster.wait_running(3, 60)
        booted = time.monotonic() - t_back

        def accepted_again() -> bool:
            resp = poster.post(client, f"after{len(poster.attempted)}")
            return resp is not None and resp.status_code == 202

        wait_for(accepted_again, timeout=60, interval=0.2, what="a 202 once the nodes are back")
        resumed = time.monotonic() - t_back
        wait_for(lambda: client.get(f"{url}/health").status_code == 200, timeout=30, what="/health 200 again")
        for i in range(20):
            resp = poster.post(client, f"later{i}")
            assert resp is not None and resp.status_code == 202, (resp and resp.status_code, "".join(lines[-30:]))
    accepted = set(poster.accepted)
    wait_for(lambda: accepted <= done(r), timeout=90, what="every accepted message's effect")
    report = check(r, keys, accepted)
    print(
        f"\n{report.table()}\nstatuses {poster.statuses}; 503 answers {answers}; /health's rabbitmq meanwhile {health}; nodes back in {booted:.1f} s, "
        f"first 202 {resumed:.1f} s after restarting them; slowest answer {poster.slowest:.1f} s\n"
        + "".join(line for line in lines if "RabbitMQ" in line)[-3000:]
    )
    assert (report.lost, report.duplicated_effects) == (0, 0)
    assert set(done(r)) <= poster.attempted
    assert 500 not in poster.statuses
