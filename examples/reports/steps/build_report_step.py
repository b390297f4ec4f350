"""Build one report: query, chart, PDF, HTML, each stage a step of its progress; the files go to the blob store."""

import datetime as dt
from typing import Any

from pydantic import BaseModel
from reportjobs import render
from reportjobs.requests import GROUP
from reportjobs.sales import money, query

from iii_console import Step, SyncContext, queue


class ReportJob(BaseModel):
    report_id: str
    start: dt.date
    end: dt.date
    requested_by: str = "http"


config = Step(name="BuildReport", triggers=[queue("reports.requested", input=ReportJob)], flows=["reports"])


def handler(job: ReportJob, ctx: SyncContext) -> Any:
    if (ctx.state.get(GROUP, job.report_id) or {}).get("status") == "done":
        return  # a redelivery after the report was stored
    try:
        build(job, ctx)
    except Exception as exc:
        if ctx.attempt >= ctx.max_attempts:
            # The last attempt: say so where GET /reports/ID looks, and let a new request build it again
            # (its dedup key changes with this failure, see reportjobs.requests).
            ctx.state.set(
                GROUP,
                job.report_id,
                {
                    "status": "failed",
                    "start": str(job.start),
                    "end": str(job.end),
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "failed_ms": int(dt.datetime.now(dt.UTC).timestamp() * 1000),
                },
            )
        raise


def build(job: ReportJob, ctx: SyncContext) -> None:
    title = f"Sales report {job.start} to {job.end}"
    ctx.progress(0, 4, note="query")
    sales = query(job.start, job.end)
    ctx.progress(1, 4, note="chart")
    png = render.chart(sales)
    ctx.progress(2, 4, note="pdf")
    pdf = render.pdf(sales, title, png)
    ctx.progress(3, 4, note="html")
    page = render.html(sales, title, png)
    name = f"{job.report_id}"
    report = {
        "status": "done",
        "start": str(job.start),
        "end": str(job.end),
        "orders": sales.orders,
        "revenue": money(sales.total_cents),
        "revenue_cents": sales.total_cents,
        "pdf": ctx.blobs.put(pdf, content_type="application/pdf", name=f"{name}.pdf"),
        "html": ctx.blobs.put(page, content_type="text/html; charset=utf-8", name=f"{name}.html"),
        "chart": ctx.blobs.put(png, content_type="image/png", name=f"{name}.png"),
    }
    ctx.state.set(GROUP, job.report_id, report)
    ctx.progress(4, 4, note="done")
    ctx.emit(
        "report.built",
        data={"report_id": job.report_id, "orders": sales.orders, "revenue": report["revenue"], "requested_by": job.requested_by},
    )
