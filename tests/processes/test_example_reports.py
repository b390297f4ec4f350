"""examples/reports end to end: a sales report asked for over HTTP and by the weekly cron step, built
by a real worker (matplotlib, fpdf2, Jinja2) into blobs, downloaded and read back."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import sqlite3
from pathlib import Path

import pytest
import redis

from iii_console.testing import IIIApp

from ..helpers import ROOT, wait_for

pytestmark = pytest.mark.slow
pypdf = pytest.importorskip("pypdf", reason="the examples extra is not installed")
Image = pytest.importorskip("PIL.Image", reason="the examples extra is not installed")

EXAMPLE = ROOT / "examples" / "reports"


@pytest.fixture(scope="module")
def reports(tmp_path_factory, redis_server):
    """One running copy of the example for the module (each test asks for its own period)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REPORTS_DATABASE_URL", raising=False)
        project = tmp_path_factory.mktemp("example") / "reports"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".iii", "__pycache__"))
        client = redis.Redis.from_url(redis_server.url)
        client.flushall()
        client.close()
        app = IIIApp(project, redis_server.url).start()
    yield app, project
    app.stop()


def _totals(project: Path, start: str, end: str) -> tuple[int, int]:
    with sqlite3.connect(project / ".iii" / "reports.sqlite") as db:
        return db.execute(
            "SELECT count(*), sum(amount_cents) FROM orders WHERE placed_on BETWEEN ? AND ?", (start, end)
        ).fetchone()


def test_a_report_is_built_once_into_a_pdf_with_its_period_and_totals_and_a_real_chart(reports):
    """Given the seeded orders, when November's report is asked for twice at once and once after it was built,
    then one build runs through its four stages, the PDF holds the period, the order count and the revenue, its
    chart is a picture of many colours, the HTML says the same, and the later request answers with the built one."""
    app, project = reports
    period = {"start": "2026-11-01", "end": "2026-11-30"}
    first, twin = app.post("/reports", json=period), app.post("/reports", json=period)
    assert first.status_code == twin.status_code == 202, first.text
    rid = first.json()["report_id"]
    app.wait_for("report.built", trace=first.json()["trace_id"], timeout=60)
    assert [e.data["note"] for e in app.events("progress", step="BuildReport")] == ["query", "chart", "pdf", "html", "done"]

    count, cents = _totals(project, period["start"], period["end"])
    assert count > 100
    revenue = f"{cents // 100:,}.{cents % 100:02d}"
    pdf = app.request("GET", f"/reports/{rid}/pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    text = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert "2026-11-01 to 2026-11-30" in text and f"Orders: {count:,}" in text and f"Revenue: {revenue}" in text
    assert "Top customers" in text

    png = Image.open(io.BytesIO(app.request("GET", f"/reports/{rid}/chart").content)).convert("RGB")
    colours = png.getcolors(maxcolors=1 << 20)
    assert png.size[0] > 400 and len(colours) > 50
    assert max(n for n, _ in colours) < 0.9 * png.size[0] * png.size[1]  # not a blank page with a frame
    page = app.request("GET", f"/reports/{rid}/html").text
    assert f"Revenue: {revenue}" in page and "data:image/png;base64," in page

    again = app.post("/reports", json=period)
    assert again.status_code == 200 and again.json()["revenue"] == revenue
    assert len([e for e in app.events("report.built") if e.data["report_id"] == rid]) == 1
    assert len(app.events("message.enqueued", step="BuildReport", trace=first.json()["trace_id"])) == 1
    assert app.post("/reports", json={"start": "2026-11-30", "end": "2026-11-01"}).status_code == 400


def test_a_period_without_sales_gets_a_report_whose_chart_says_so(reports):
    """Given a period with no orders, when its report is asked for, then it is built (0 orders) and its chart says
    "no sales in this period" in the middle of its plot, in grey, instead of a bare grid of 0 to 1."""
    app, project = reports
    period = {"start": "2001-01-01", "end": "2001-01-07"}
    rid = app.post("/reports", json=period).json()["report_id"]
    wait_for(lambda: [e for e in app.events("report.built") if e.data["report_id"] == rid], timeout=60, what="the build")
    assert _totals(project, period["start"], period["end"])[0] == 0
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(app.request("GET", f"/reports/{rid}/pdf").content)).pages)
    assert "Orders: 0" in text
    png = Image.open(io.BytesIO(app.request("GET", f"/reports/{rid}/chart").content)).convert("RGB")
    w, h = png.size
    middle = png.crop((w // 3, h // 3, 2 * w // 3, 2 * h // 3)).getcolors(maxcolors=1 << 16) or []
    greys = sum(n for n, (r, g, b) in middle if r == g == b and 100 <= r <= 140)
    assert greys > 50, middle[:10]  # the words, drawn in #777777


def test_the_weekly_cron_step_builds_last_weeks_report_once(reports):
    """Given the weekly cron step, when it fires twice, then last week's report (Monday to Sunday) is built once."""
    app, _project = reports
    trace = app.run_cron("WeeklyReport")
    app.wait_for("report.built", trace=trace, timeout=60)
    app.wait_for("message.processed", step="WeeklyReport", trace=app.run_cron("WeeklyReport"))
    [built] = [e for e in app.events("report.built") if e.data["requested_by"] == "cron"]
    start = dt.date.fromisoformat(built.data["report_id"].split("-", 1)[1][:10])
    assert start.weekday() == 0 and (dt.datetime.now(dt.UTC).date() - start).days in range(7, 14)
    assert built.data["requested_by"] == "cron"


def test_a_report_whose_build_failed_is_built_again_on_the_next_request(tmp_path):
    """Given the example reading a database with no orders table, when a report is asked for, then its build is
    dead-lettered and GET says it failed and why; when the table exists and the report is asked for again, then it is
    built (the failure changed its dedup key: before, the request was deduplicated for 24 h and nothing ran)."""
    from iii_console.core.redis_server import RedisServer

    # A Redis of its own: the module's running copy (the `reports` fixture) must not take these builds.
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    with pytest.MonkeyPatch.context() as mp:
        other = tmp_path / "other.sqlite"
        sqlite3.connect(other).close()
        mp.setenv("REPORTS_DATABASE_URL", f"sqlite:///{other}")
        project = tmp_path / "reports"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".iii", "__pycache__"))
        app = IIIApp(project, server.url).start()
    try:
        period = {"start": "2026-10-01", "end": "2026-10-31"}
        first = app.post("/reports", json=period)
        assert first.status_code == 202, first.text
        rid = first.json()["report_id"]
        app.wait_for("message.dead_lettered", step="BuildReport", trace=first.json()["trace_id"], timeout=60)
        record = app.request("GET", f"/reports/{rid}").json()
        assert record["status"] == "failed" and "no such table: orders" in record["error"]

        with sqlite3.connect(other) as db:
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount_cents INTEGER, placed_on DATE)")
            db.execute("INSERT INTO orders VALUES (1, 'Ada', 1250, '2026-10-05')")
        again = app.post("/reports", json=period)
        assert again.status_code == 202, again.text
        built = app.wait_for("report.built", trace=again.json()["trace_id"], timeout=60)
        assert built.data["orders"] == 1 and app.request("GET", f"/reports/{rid}").json()["status"] == "done"
    finally:
        app.stop()
        server.stop()
