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

from ..helpers import ROOT

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
