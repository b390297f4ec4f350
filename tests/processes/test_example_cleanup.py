"""examples/cleanup end to end: cron sweeps of old unreferenced blobs, old rows (in batches),
finished state and old dead letters, run by real workers; a held lease makes a run a skip; two
scheduler processes fire each tick once."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iii_console.core.blobs import BlobStore
from iii_console.core.dlq import DeadLetter, DeadLetterStore
from iii_console.core.keys import Keys
from iii_console.core.lease import Leases
from iii_console.testing import IIIApp

from ..helpers import ROOT, wait_for

pytestmark = pytest.mark.slow
pytest.importorskip("sqlalchemy", reason="the examples extra is not installed")

EXAMPLE = ROOT / "examples" / "cleanup"
DAY_MS = 86_400_000
SWEEPS = {"SweepBlobs": "blobs", "PruneRows": "rows", "PruneState": "state", "PruneDeadLetters": "dead_letters"}


def _copy(tmp_path: Path) -> Path:
    project = tmp_path / "cleanup"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".iii", "__pycache__"))
    (project / ".iii").mkdir()
    return project


def _seed(project: Path, now_ms: int) -> dict:
    """Old and new items of each kind; returns what must go and what must stay."""
    store = BlobStore.from_config("", project / ".iii")
    month_ago = time.time() - 30 * 86400
    blobs = {
        name: store.put(name.encode() * 100, name=name)
        for name in ("old-unreferenced", "old-in-state", "old-in-dead-letter", "new-unreferenced")
    }
    for name, ref in blobs.items():
        if name.startswith("old"):
            os.utime(store.path(ref), (month_ago, month_ago))
    with sqlite3.connect(project / ".iii" / "cleanup.sqlite") as db:
        db.execute("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, created_ms BIGINT NOT NULL, message TEXT NOT NULL)")
        db.executemany(
            "INSERT INTO audit_log (created_ms, message) VALUES (?, ?)",
            [(now_ms - 40 * DAY_MS, "old")] * 2500 + [(now_ms - DAY_MS, "new")] * 100,
        )
    return blobs


def _seed_redis(app: IIIApp, r, keys: Keys, blobs: dict, now_ms: int) -> None:
    app.state.set("reports", "nov", {"status": "done", "pdf": blobs["old-in-state"]})
    old, new = now_ms - 3 * DAY_MS, now_ms - 60_000
    app.state.set("jobs", "old-done", {"status": "done", "finished_ms": old})
    app.state.set("jobs", "old-failed", {"status": "failed", "finished_ms": old})
    app.state.set("jobs", "new-done", {"status": "done", "finished_ms": new})
    app.state.set("jobs", "old-running", {"status": "running", "started_ms": old})
    for entry_id, ms, data in (
        ("d-old", now_ms - 20 * DAY_MS, {}),
        ("d-new", now_ms - DAY_MS, {"file": blobs["old-in-dead-letter"]}),
    ):
        entry = DeadLetter(id=entry_id, dlq="x.dlq", error="boom", data=data, last_failure_ms=ms)
        r.hset(keys.dlq_entries("x.dlq"), entry_id, entry.encode())
        r.zadd(keys.dlq("x.dlq"), {entry_id: ms})
        r.sadd(keys.dlq_names, "x.dlq")


def _sweep(app: IIIApp, step: str) -> dict:
    trace = app.run_cron(step)
    return app.wait_for("cleanup.swept", trace=trace, timeout=30).data


def test_sweeps_remove_exactly_the_old_unreferenced_items_once_and_skip_while_the_lease_is_held(
    tmp_path, redis_url, r, keys, monkeypatch
):
    """Given old and new blobs (some referenced from state or a dead letter), rows, finished and running state and
    dead letters, when each sweep runs, then exactly the old unreferenced items go, rows in batches; a second run
    removes nothing; and a sweep whose lease another holder has is skipped, saying so, removing nothing."""
    monkeypatch.delenv("CLEANUP_CRON", raising=False)
    now_ms = int(time.time() * 1000)
    project = _copy(tmp_path)
    blobs = _seed(project, now_ms)
    app = IIIApp(project, redis_url).start()
    try:
        _seed_redis(app, r, keys, blobs, now_ms)
        lease = Leases(r, keys).acquire("cleanup.blobs", 30_000)
        assert _sweep(app, "SweepBlobs") == {
            "sweep": "blobs",
            "removed": 0,
            "skipped": "another run holds the lease",
            "duration_ms": pytest.approx(0, abs=5000),
        }
        lease.release()

        first = {step: _sweep(app, step) for step in SWEEPS}
        assert first["SweepBlobs"]["removed"] == 1 and first["SweepBlobs"]["kept"] == 2
        assert (first["PruneRows"]["removed"], first["PruneRows"]["batches"]) == (2500, 3)
        assert first["PruneState"]["removed"] == 2 and first["PruneDeadLetters"]["removed"] == 1

        store = BlobStore.from_config("", project / ".iii")
        assert {n for n, ref in blobs.items() if store.exists(ref)} == {"old-in-state", "old-in-dead-letter", "new-unreferenced"}
        with sqlite3.connect(project / ".iii" / "cleanup.sqlite") as db:
            assert db.execute("SELECT message, count(*) FROM audit_log GROUP BY message").fetchall() == [("new", 100)]
        assert sorted(app.state.list("jobs")) == ["new-done", "old-running"]
        assert [e.id for e in DeadLetterStore(r, keys).list("x.dlq")] == ["d-new"]
        assert [e.data["note"] for e in app.events("progress", step="PruneRows")] == ["1000 rows", "2000 rows", "2500 rows"]

        second = {step: _sweep(app, step) for step in SWEEPS}
        assert [s["removed"] for s in second.values()] == [0, 0, 0, 0]
    finally:
        app.stop()


def _role(project: Path, redis_url: str, role: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iii_console",
            "--no-ui",
            "--role",
            role,
            "--redis",
            redis_url,
            "--config",
            str(project / "iii-config.yaml"),
        ],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_two_schedulers_fire_each_sweeps_tick_once_and_one_goes_on_when_the_other_stops(tmp_path, redis_url, monkeypatch):
    """Given every sweep on a one-second schedule, a worker and two scheduler processes, when ticks pass and the
    scheduler that fired the last one is stopped, then the other fires the next ones, and every tick of every sweep is fired
    once and run once."""
    monkeypatch.setenv("CLEANUP_CRON", "* * * * * *")
    project = _copy(tmp_path)
    seen = IIIApp(project, redis_url)  # not started: reads the events on the shared Redis
    procs = [_role(project, redis_url, "worker"), _role(project, redis_url, "scheduler"), _role(project, redis_url, "scheduler")]
    schedulers = {p.pid: p for p in procs[1:]}

    def firing() -> set[int]:
        return {int(e.worker.split(":")[-2]) for e in seen.events("cron.fired")}

    try:
        wait_for(lambda: all(seen.events("cron.fired", step=s) for s in SWEEPS), timeout=20, what="a tick of every sweep")
        assert firing() <= set(schedulers)
        stopped = int(seen.events("cron.fired")[-1].worker.split(":")[-2])  # the one that fired last
        schedulers[stopped].terminate()
        schedulers[stopped].wait(20)
        n = len(seen.events("cron.fired"))
        wait_for(lambda: len(seen.events("cron.fired")) >= n + len(SWEEPS), timeout=20, what="ticks after the stop")
        [survivor] = set(schedulers) - {stopped}
        assert {int(e.worker.split(":")[-2]) for e in seen.events("cron.fired")[n:]} == {survivor}
        for step in SWEEPS:
            ticks = seen.events("cron.fired", step=step)
            assert len({e.data["scheduled_ms"] for e in ticks}) == len(ticks), f"{step}: a tick fired twice"
            wait_for(
                lambda: {e.trace_id for e in ticks} <= {e.trace_id for e in seen.events("cleanup.swept", step=step)},
                timeout=10,
                what=f"{step}'s runs",
            )
            runs = [e.trace_id for e in seen.events("cleanup.swept", step=step)]
            assert all(runs.count(t.trace_id) == 1 for t in ticks), f"{step}: a tick ran twice"
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(30)
        seen.close()
