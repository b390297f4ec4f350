"""Export a table to CSV or JSON lines, streamed from a server-side cursor into a blob."""

import csv
import datetime as dt
import json
import tempfile
import time
from typing import Any

from datajobs.db import EXPORTABLE, engine
from pydantic import BaseModel
from sqlalchemy import func, select

from iii_console import Step, SyncContext, queue


class ExportJob(BaseModel):
    export_id: str
    table: str
    format: str


config = Step(name="ExportTable", triggers=[queue("data.export.requested", input=ExportJob)], flows=["data"])

BATCH = 2000


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


def handler(job: ExportJob, ctx: SyncContext) -> Any:
    table = EXPORTABLE[job.table]
    columns = [c.name for c in table.columns]
    key = list(table.primary_key.columns)
    with engine().connect() as conn, tempfile.NamedTemporaryFile("w+", newline="", encoding="utf-8") as out:
        total = conn.execute(select(func.count()).select_from(table)).scalar_one()
        # stream_results: a server-side cursor on PostgreSQL, so rows arrive BATCH at a
        # time instead of the whole table in memory.
        rows = conn.execution_options(stream_results=True, yield_per=BATCH).execute(select(table).order_by(*key))
        writer = csv.writer(out) if job.format == "csv" else None
        if writer:
            writer.writerow(columns)
        n = 0
        for row in rows:
            if writer:
                writer.writerow([_plain(v) for v in row])
            else:
                out.write(json.dumps(dict(zip(columns, map(_plain, row))), ensure_ascii=False) + "\n")
            n += 1
            if n % BATCH == 0:
                ctx.progress(min(n, total), max(total, n), note=f"{n} rows")
        out.flush()
        ctype = "text/csv" if writer else "application/x-ndjson"
        ref = ctx.blobs.put(out.name, content_type=ctype, name=f"{job.table}.{job.format}")
    ctx.progress(n, max(n, 1), note=f"{n} rows")
    ctx.state.set(
        "exports",
        job.export_id,
        {
            "status": "done",
            "table": job.table,
            "format": job.format,
            "rows": n,
            "file": ref,
            "finished_ms": int(time.time() * 1000),
        },
    )
