"""examples/data end to end: a CSV of orders (quoted commas and newlines, UTF-8, 37 bad records)
imported in chunks by real workers into SQLite, and into PostgreSQL where one answers; a worker
SIGKILLed mid-chunk; the same file posted again; an export read back.

``III_EXAMPLES_FULL=1`` imports 50,000 records instead of 5,000.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import signal
import time

import pytest
import redis

from iii_console.testing import IIIApp

from ..helpers import ROOT, wait_stopped, worker_holds, worker_pids

pytestmark = pytest.mark.slow
sqlalchemy = pytest.importorskip("sqlalchemy", reason="the examples extra is not installed")

EXAMPLE = ROOT / "examples" / "data"
FULL = os.environ.get("III_EXAMPLES_FULL") == "1"
ROWS = 50_000 if FULL else 5_000
CHUNK = 2_000 if FULL else 500
BAD = 37
BAD_KINDS = [
    ("amount", "12,5x"),
    ("amount", "-3.00"),
    ("placed_on", "2026-13-01"),
    ("id", "x12"),
    ("customer", "   "),
    ("amount", "1.234"),
    ("fields", None),
    # Past what a BIGINT holds: the record is bad, its chunk's other rows import (the database refused the chunk).
    ("id", "99999999999999999999999"),
    ("amount", "100000000000000000.00"),
    ("amount", "1e30"),
]


def make_orders(n: int, bad: int, seed: int = 7, first_id: int = 1) -> tuple[bytes, dict[int, dict], list[int], list[int]]:
    """A CSV of ``n`` records, ``bad`` of them invalid: (file, good records by id, the bad records' lines,
    the line each record starts on)."""
    rnd = random.Random(seed)
    bad_at = set(rnd.sample(range(n), bad))
    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["id", "customer", "note", "amount", "placed_on"])
    line = 2
    good: dict[int, dict] = {}
    bad_lines: list[int] = []
    line_of: list[int] = []
    for i in range(n):
        line_of.append(line)
        oid = first_id + i
        customer = rnd.choice(["Zoë Ångström", "李雷", "José Ñúñez", "Ørjan Ødegård", "Acme, Inc."])
        note = rnd.choice(["plain", 'said "hi", then left', "two\nlines, one comma", 'émoji ☕ and "quotes"', ""])
        cents = rnd.randrange(0, 1_000_000)
        day = f"2026-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}"
        row = [str(oid), customer, note, f"{cents // 100}.{cents % 100:02d}", day]
        if i in bad_at:
            field, value = BAD_KINDS[len(bad_lines) % len(BAD_KINDS)]
            if field == "fields":
                row = row[:3]
            else:
                row[["id", "customer", "note", "amount", "placed_on"].index(field)] = value
            bad_lines.append(line)
        else:
            good[oid] = {"customer": customer, "note": note, "amount_cents": cents, "placed_on": day}
        w.writerow(row)
        line += 1 + note.count("\n")
    return out.getvalue().encode("utf-8"), good, bad_lines, line_of


@pytest.fixture(scope="module")
def orders():
    return make_orders(ROWS, BAD)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'data.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def app(database, tmp_path_factory, redis_server):
    """examples/data running (a copy, on its own blobs and database) for the module's tests on one backend.

    Each chunk pauses 150 ms inside its transaction, so a worker can be killed mid-chunk.
    """
    project = tmp_path_factory.mktemp("example") / "data"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".iii", "__pycache__"))
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATABASE_URL", database)
        mp.setenv("DATA_CHUNK_ROWS", str(CHUNK))
        mp.setenv("DATA_CHUNK_PAUSE_MS", "150")
        running = IIIApp(project, redis_server.url).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def db(database):
    url = database if database.startswith("sqlite") else "postgresql+psycopg://" + database.split("://", 1)[1]
    engine = sqlalchemy.create_engine(url)
    yield engine
    engine.dispose()


def _count_sum(db, ids: range) -> tuple[int, int, int]:
    with db.connect() as conn:
        return tuple(
            conn.execute(
                sqlalchemy.text(
                    "SELECT count(*), count(DISTINCT id), coalesce(sum(amount_cents), 0) FROM orders WHERE id BETWEEN :a AND :b"
                ),
                {"a": ids.start, "b": ids.stop - 1},
            ).one()
        )


def _upload(app: IIIApp, body: bytes, name: str = "orders.csv", ctype: str = "text/csv"):
    return app.post(
        "/imports", content=body, headers={"content-type": ctype, "content-disposition": f'attachment; filename="{name}"'}
    )


def test_a_csv_imports_once_with_its_bad_lines_listed_and_exports_back(app, db, orders):
    """Given a CSV with quoted commas and newlines and 37 bad records, when it is posted twice at once and once more
    after it finished, then the orders' count and sum match, the errors file lists the 37 lines, the import completes
    once and the later post is a no-op; a run left incomplete resumes with only its missing chunks; a JSON-lines file
    imports too; and an export reads back as what went in."""
    body, good, bad_lines, line_of = orders
    ids = range(1, ROWS + 1)
    first, twin = _upload(app, body), _upload(app, body)
    assert first.status_code == twin.status_code == 202, first.text
    iid, trace = first.json()["import_id"], first.json()["trace_id"]
    app.wait_for("data.imported", trace=trace, timeout=120 if FULL else 40)

    assert _count_sum(db, ids) == (len(good), len(good), sum(r["amount_cents"] for r in good.values()))
    record = app.request("GET", f"/imports/{iid}").json()
    assert (record["status"], record["rows"], record["errors"]) == ("done", len(good), BAD)
    assert record["finished_ms"] > 0  # what examples/cleanup's PruneState ages a finished import by
    errors = list(csv.DictReader(io.StringIO(app.request("GET", f"/imports/{iid}/errors").text)))
    assert [int(e["line"]) for e in errors] == bad_lines
    assert any("amount" in e["error"] for e in errors) and any("placed_on" in e["error"] for e in errors)
    assert len(app.events("data.imported", trace=trace)) == 1 and len(app.events("group.completed", trace=trace)) == 1
    assert len(app.events("message.enqueued", step="PlanImport", trace=trace)) == 1
    assert len(app.events("message.enqueued", step="PlanImport", trace=twin.json()["trace_id"])) == 0  # deduplicated
    progress = app.events("progress", step="ImportChunk", trace=trace)
    assert len(progress) == 2 * record["chunks"]  # as each chunk starts, and once it is committed
    assert max(e.data["done"] for e in progress) == record["chunks"] == len(range(0, ROWS, CHUNK))

    planned = len(app.events("message.enqueued", step="PlanImport"))
    again = _upload(app, body)
    assert again.status_code == 200 and again.json()["already"] is True
    assert len(app.events("message.enqueued", step="PlanImport")) == planned and _count_sum(db, ids)[0] == len(good)

    # A run that ended incomplete (its last two chunks undone, as if they had been dead-lettered):
    # posting the file again runs only those two chunks.
    first_undone = len(range(0, ROWS, CHUNK)) - 2
    with db.begin() as conn:
        for sql in (
            "DELETE FROM import_chunks WHERE import_id = :i AND chunk >= :c",
            "DELETE FROM orders WHERE id > :n AND id <= :last",
            "DELETE FROM import_errors WHERE import_id = :i AND line >= :l",
        ):
            conn.execute(
                sqlalchemy.text(sql),
                {"i": iid, "c": first_undone, "n": first_undone * CHUNK, "last": ROWS, "l": line_of[first_undone * CHUNK]},
            )
    app.state.set("imports", iid, {**app.state.get("imports", iid), "status": "incomplete"})
    resumed = _upload(app, body)
    assert resumed.status_code == 202 and resumed.json()["run"] == 1
    app.wait_for("data.imported", trace=resumed.json()["trace_id"], timeout=40)
    assert len(app.events("message.enqueued", step="ImportChunk", trace=resumed.json()["trace_id"])) == 2
    assert _count_sum(db, ids) == (len(good), len(good), sum(r["amount_cents"] for r in good.values()))
    assert app.request("GET", f"/imports/{iid}").json()["errors"] == BAD

    lines = [
        json.dumps({"id": ROWS + i, "customer": "Jürgen", "note": "a\nb", "amount": "1.00", "placed_on": "2026-01-01"})
        for i in range(1, 21)
    ]
    lines[4], lines[9] = "{not json", json.dumps({"id": ROWS + 10, "customer": "x"})
    lines[14] = lines[14].replace(f'"id": {ROWS + 15}', '"id": 1')  # taken by the CSV import: reported, not overwritten
    jl = _upload(app, ("\n".join(lines) + "\n").encode(), "more.jsonl", "application/x-ndjson").json()
    app.wait_for("data.imported", trace=jl["trace_id"])
    jrec = app.request("GET", f"/imports/{jl['import_id']}").json()
    assert (jrec["rows"], jrec["errors"]) == (17, 3)
    jerrors = list(csv.DictReader(io.StringIO(app.request("GET", f"/imports/{jl['import_id']}/errors").text)))
    assert [int(e["line"]) for e in jerrors] == [5, 10, 15] and f"id 1 exists already (import {iid})" == jerrors[2]["error"]
    assert jerrors[0]["record"] == "{not json"

    exp = app.post("/exports", json={"table": "orders", "format": "csv"}).json()
    app.wait_for("message.processed", step="ExportTable", trace=exp["trace_id"])
    download = app.request("GET", f"/exports/{exp['export_id']}")
    assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
    back = {
        int(r["id"]): {
            "customer": r["customer"],
            "note": r["note"],
            "amount_cents": int(r["amount_cents"]),
            "placed_on": r["placed_on"],
        }
        for r in csv.DictReader(io.StringIO(download.content.decode("utf-8"), newline=""))
    }
    assert {k: v for k, v in back.items() if k <= ROWS} == good
    assert len(back) == len(good) + 17

    assert app.post("/exports", json={"table": "secrets"}).status_code == 400


def test_bad_input_is_refused_naming_the_field_or_dead_lettered_with_the_reason(app):
    """Given a path outside the imports folder, a body that is not CSV and a CSV whose header lacks columns, then the
    first two are answered 400 and 415 naming what is wrong, and the third's plan is dead-lettered after one attempt
    with the missing columns in its error and in the import's record."""
    outside = app.post("/imports/from-path", json={"path": "../iii-config.yaml"})
    assert outside.status_code == 400 and outside.json()["fields"][0]["field"] == "path"
    for odd in ("a\u0000b.csv", "x" * 5000 + ".csv"):  # a NUL, a name past what the file system takes: not a 500
        refused = app.post("/imports/from-path", json={"path": odd})
        assert refused.status_code == 400 and refused.json()["fields"][0]["field"] == "path", refused.text
    assert _upload(app, b"<html/>", "page.html", "text/html").status_code == 415
    for name, ctype in (("empty.csv", "text/csv"), ("empty.jsonl", "application/x-ndjson")):
        empty = _upload(app, b"", name, ctype)
        assert empty.status_code == 400 and empty.json()["fields"][0]["field"] == "body", empty.text
    bad = _upload(app, b"id,name\n1,x\n", "wrong.csv").json()
    dead = app.wait_for("message.dead_lettered", step="PlanImport", trace=bad["trace_id"])
    assert "the header lacks customer, note, amount, placed_on" in dead.error and dead.attempt == 1
    assert app.state.get("imports", bad["import_id"])["status"] == "failed"


def test_a_worker_killed_mid_chunk_leaves_no_duplicate_rows(app, db):
    """Given an import whose chunks take a while, when a worker process is SIGKILLed while it holds a chunk, then
    the chunk is redelivered and applied once: every good order is there once and the import completes once."""
    first = 1_000_001
    body, good, _, _ = make_orders(CHUNK * 5, 3, seed=11, first_id=first)
    trace = _upload(app, body, "more-orders.csv").json()["trace_id"]
    killed = None
    deadline = time.monotonic() + 30
    while killed is None and time.monotonic() < deadline:
        settled = {e.message_id for e in app.events("message.processed", step="ImportChunk", trace=trace)}
        running = [e for e in app.events("message.started", step="ImportChunk", trace=trace) if e.message_id not in settled]
        if running and settled:  # one chunk committed already, another in its transaction (as the stream says)
            pid = int(running[-1].worker.split(":")[-2])
            # The stream lags on a loaded machine: freeze the process, then make sure it still holds a message,
            # so the kill takes a chunk with it (else let it go on and look again).
            os.kill(pid, signal.SIGSTOP)
            wait_stopped(pid)
            wid = worker_pids(app.redis, app.keys).get(pid)
            if wid is not None and worker_holds(app.redis, app.keys, wid):
                os.kill(pid, signal.SIGKILL)
                killed = pid
            else:
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    assert killed is not None, "no worker was seen holding a chunk"
    app.wait_for("data.imported", trace=trace, timeout=60)
    assert _count_sum(db, range(first, first + CHUNK * 5)) == (
        len(good),
        len(good),
        sum(r["amount_cents"] for r in good.values()),
    )
    # The killed worker held a chunk of this import (the one seen running, or the next it took): it came back.
    assert app.events("message.redelivered", step="ImportChunk", trace=trace)
    assert len(app.events("data.imported", trace=trace)) == 1


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"id": "99999999999999999999999"}, "id: must be from 1 to 9223372036854775807"),
        ({"id": "9" * 5000}, "id: must be from 1"),
        ({"amount": "100000000000000000.00"}, "amount: at most 92233720368547758.07"),
        ({"amount": "1e30"}, "amount: not an amount in cents' range"),
        ({"customer": "Ada\x00Co"}, "customer: holds a NUL character"),
        ({"customer": None}, "customer: must be text, not null"),
        ({"note": {"a": 1}}, 'note: must be text, not {"a": 1}'),
        ({"placed_on": "20260102"}, "placed_on: not a date (YYYY-MM-DD)"),
    ],
)
def test_a_record_a_database_would_refuse_is_a_bad_record_naming_the_field(records_module, fields, error):
    """Given a JSON-lines record with a value no orders row can hold (past BIGINT, a NUL, a null or an object for
    text, a date not written YYYY-MM-DD), when checked, then it is a bad record naming the field (the database
    refused it, failing its whole chunk, good rows and all)."""
    good = {"id": 7, "customer": "Ada", "note": None, "amount": "2.50", "placed_on": "2026-01-02"}
    assert records_module.parse(json.dumps(good).encode(), "jsonl", [])["amount_cents"] == 250
    with pytest.raises(records_module.BadRecord, match=re.escape(error)):
        records_module.parse(json.dumps({**good, **fields}).encode(), "jsonl", [])


@pytest.fixture(scope="module")
def records_module():
    """The example's file scanner, imported from its steps folder as its steps import it."""
    import importlib
    import sys

    sys.path.insert(0, str(EXAMPLE / "steps"))
    try:
        yield importlib.import_module("datajobs.records")
    finally:
        sys.path.remove(str(EXAMPLE / "steps"))


@pytest.mark.parametrize(
    "text, size, chunks, lines",
    [
        ("id,customer,note,amount,placed_on\r\n1,a,x,1,2026-01-01\r\n2,b,y,2,2026-01-02\r\n", 1, 2, [2, 3]),  # CRLF
        ('\ufeffid,customer,note,amount,placed_on\n1,a,"q\n\nr",1,2026-01-01\n\n2,b,y,2,2026-01-02\n', 5, 1, [2, 6]),
        (
            'id,customer,note,amount,placed_on\n1,a,"say ""hi""\n,",1,2026-01-01\n2,b,"never closed,2,2026-01-02\n3,c,z,3,2026-01-03\n',
            2,
            1,
            [2, 4],
        ),
        # A quote inside a plain field is a character, as the csv module reads it (counting quotes, the rest of
        # the file became one record); one that opens a field still spans lines.
        (
            'id,customer,note,amount,placed_on\n1,Pipe Co,6" pipe,1,2026-01-01\n2,b,"x\ny",2,2026-01-02\n3,c,a"b"c,3,2026-01-03\n',
            1,
            3,
            [2, 3, 5],
        ),
    ],
)
def test_one_scan_plans_chunks_at_record_boundaries(records_module, text, size, chunks, lines):
    """Given CSVs with CRLF line ends, a BOM, quoted newlines, blank lines, doubled quotes and a quote never closed,
    when planned and each chunk read back, then chunks cut between records and every record keeps its first line."""
    data = text.encode("utf-8")
    header, planned = records_module.plan(io.BytesIO(data), "csv", size)
    assert header == ["id", "customer", "note", "amount", "placed_on"] and len(planned) == chunks
    fh, seen = io.BytesIO(data), []
    for c in planned:
        fh.seek(c.start)
        seen += [line for line, _s, _e, _raw in records_module.records(fh, "csv", c.end, c.line)]
    assert seen == lines
