"""Import one chunk: its good records and its bad ones in one transaction with its ledger row.

The ledger row is the transaction's first write: a chunk applied before (a redelivery
after a worker died past the commit, or a re-run) finds it taken and writes nothing; a
worker killed before the commit leaves nothing, and the redelivered chunk applies whole.
"""

import os
import time
from typing import Any

from datajobs.db import engine, import_chunks, import_errors, insert, ledger, orders
from datajobs.records import BadRecord, parse, records
from pydantic import BaseModel
from sqlalchemy import select

from iii_console import Step, SyncContext, queue


class ChunkJob(BaseModel):
    import_id: str
    file: dict
    format: str
    header: list[str]
    chunk: int
    start: int
    end: int
    line: int
    total: int


config = Step(name="ImportChunk", triggers=[queue("data.import.chunk", input=ChunkJob)], flows=["data"])


def handler(job: ChunkJob, ctx: SyncContext) -> Any:
    with engine().connect() as conn:  # the import's progress, shown on this running chunk too
        before = ledger(conn, job.import_id)
    ctx.progress(min(before["chunks"], job.total), job.total, note=f"chunk {job.chunk + 1} of {job.total}")
    good: dict[int, tuple[int, str, dict]] = {}  # id -> (line, record, row)
    bad: list[dict] = []

    def reject(line: int, record: str, error: str) -> None:
        bad.append({"import_id": job.import_id, "line": line, "error": error, "record": record[:2000]})

    with ctx.blobs.open(job.file) as fh:
        fh.seek(job.start)
        for line, _start, _end, raw in records(fh, job.format, job.end, job.line):
            record = raw.decode("utf-8", "replace").rstrip("\r\n")
            try:
                row = parse(raw, job.format, job.header)
            except BadRecord as exc:
                reject(line, record, str(exc))
                continue
            if row["id"] in good:  # an id twice in one chunk: the later record is the bad one
                reject(line, record, f"id {row['id']} is also on line {good[row['id']][0]}")
            else:
                good[row["id"]] = (line, record, {**row, "import_id": job.import_id})
    pause_ms = int(os.environ.get("DATA_CHUNK_PAUSE_MS", "0"))
    with engine().begin() as conn:
        claim = conn.execute(
            insert(import_chunks, conn).on_conflict_do_nothing(),
            {"import_id": job.import_id, "chunk": job.chunk, "rows": 0, "errors": 0},
        )
        if claim.rowcount == 0:
            ctx.logger.info("chunk already applied", import_id=job.import_id, chunk=job.chunk)
            return {"chunk": job.chunk, "already": True}
        inserted: set[int] = set()
        if good:
            stmt = insert(orders, conn).on_conflict_do_nothing(index_elements=["id"]).returning(orders.c.id)
            inserted = set(conn.execute(stmt, [row for _line, _record, row in good.values()]).scalars())
            taken = [i for i in good if i not in inserted]
            if taken:  # ids an earlier import holds already: reported, not overwritten
                owners = dict(conn.execute(select(orders.c.id, orders.c.import_id).where(orders.c.id.in_(taken))).all())
                for i in taken:
                    reject(good[i][0], good[i][1], f"id {i} exists already (import {owners.get(i)})")
        if bad:
            conn.execute(insert(import_errors, conn).on_conflict_do_nothing(), bad)
        conn.execute(
            import_chunks.update()
            .where((import_chunks.c.import_id == job.import_id) & (import_chunks.c.chunk == job.chunk))
            .values(rows=len(inserted), errors=len(bad))
        )
        if pause_ms:  # to watch an import in the console, or to kill a worker mid-chunk
            time.sleep(pause_ms / 1000)
    with engine().connect() as conn:
        done = ledger(conn, job.import_id)
    ctx.progress(min(done["chunks"], job.total), job.total, note=f"{done['rows']} rows, {done['errors']} bad")
    return {"chunk": job.chunk, "rows": len(inserted), "errors": len(bad)}
