"""The fan-in's completion: one message when every chunk of a run is settled. Totals, errors file, status."""

import csv
import tempfile
import time
from typing import Any

from datajobs.db import engine, import_errors, ledger
from datajobs.start import GROUP
from pydantic import BaseModel
from sqlalchemy import select

from iii_console import Step, SyncContext, queue


class Completed(BaseModel):
    group_id: str
    total: int
    ok: int
    failed: int
    dead: int


config = Step(name="FinishImport", triggers=[queue("data.import.finished", input=Completed)], flows=["data"])


def handler(done: Completed, ctx: SyncContext) -> Any:
    _, import_id, run = done.group_id.split(".")
    record = ctx.state.get(GROUP, import_id) or {}
    if record.get("status") in ("done", "incomplete") and record.get("run") == int(run):
        return  # this completion was handled before a redelivery
    with engine().connect() as conn, tempfile.NamedTemporaryFile("w+", newline="", encoding="utf-8", suffix=".csv") as out:
        totals = ledger(conn, import_id)
        w = csv.writer(out)
        w.writerow(["line", "error", "record"])
        rows = conn.execution_options(stream_results=True, yield_per=1000).execute(
            select(import_errors.c.line, import_errors.c.error, import_errors.c.record)
            .where(import_errors.c.import_id == import_id)
            .order_by(import_errors.c.line)
        )
        for row in rows:
            w.writerow(row)
        out.flush()
        errors_file = ctx.blobs.put(out.name, content_type="text/csv", name=f"import-{import_id}-errors.csv")
    status = "done" if totals["chunks"] == record.get("chunks") else "incomplete"
    result = {
        **record,
        "status": status,
        "run": int(run),
        "rows": totals["rows"],
        "errors": totals["errors"],
        "chunks_done": totals["chunks"],
        "chunks_failed": done.failed + done.dead,
        "errors_file": errors_file,
        "finished_ms": int(time.time() * 1000),  # what a retention sweep (examples/cleanup) ages it by
    }
    ctx.state.set(GROUP, import_id, result)
    ctx.emit("data.imported", data={"import_id": import_id, "status": status, "rows": totals["rows"], "errors": totals["errors"]})
