"""Plan an import with one scan of the file, then fan the chunks out; the last one settled finishes it."""

import os
import time
from typing import Any

from datajobs.db import applied_chunks, engine
from datajobs.records import BadRecord, plan
from datajobs.start import GROUP
from pydantic import BaseModel

from iii_console import Step, SyncContext, queue


class ImportRequest(BaseModel):
    import_id: str
    file: dict
    format: str
    run: int = 0


config = Step(
    name="PlanImport",
    triggers=[queue("data.import.requested", input=ImportRequest)],
    enqueues=["data.import.chunk", "data.import.finished"],
    flows=["data"],
)


def handler(req: ImportRequest, ctx: SyncContext) -> Any:
    if (ctx.state.get(GROUP, req.import_id) or {}).get("status") == "done":
        ctx.logger.info("already imported", import_id=req.import_id)
        return
    size = int(os.environ.get("DATA_CHUNK_ROWS", "500"))
    with ctx.blobs.open(req.file) as fh:
        try:
            header, chunks = plan(fh, req.format, size)
        except BadRecord as exc:  # nothing importable: say so, do not retry
            ctx.state.set(
                GROUP,
                req.import_id,
                {"status": "failed", "error": str(exc), "file": req.file, "run": req.run, "finished_ms": int(time.time() * 1000)},
            )
            raise
    with engine().connect() as conn:
        done = applied_chunks(conn, req.import_id)
    todo = [
        {
            "import_id": req.import_id,
            "file": req.file,
            "format": req.format,
            "header": header,
            "chunk": c.index,
            "start": c.start,
            "end": c.end,
            "line": c.line,
            "total": len(chunks),
        }
        for c in chunks
        if c.index not in done
    ]
    ctx.state.set(
        GROUP,
        req.import_id,
        {
            "status": "importing",
            "file": req.file,
            "format": req.format,
            "run": req.run,
            "chunks": len(chunks),
            "records": sum(c.records for c in chunks),
            "resumed_at": len(done),
        },
    )
    ctx.progress(len(done), max(len(chunks), 1), note=f"{len(todo)} of {len(chunks)} chunks to import")
    # One group per run of an import: a redelivered plan makes the same group, which enqueues nothing twice.
    ctx.enqueue_group("data.import.chunk", todo, then="data.import.finished", group_id=f"import.{req.import_id}.{req.run}")
