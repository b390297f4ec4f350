"""Starting an import, from an upload or a path: one import per file (its sha256), whatever posts it."""

from __future__ import annotations

from typing import Any

from datajobs.records import format_of

GROUP = "imports"


def import_id(ref: Any) -> str:
    """An import is named by its file's content: the same bytes posted again are the same import."""
    return str(ref["$blob"]).split(":", 1)[1][:24]


def start(ref: dict[str, Any], fmt: str | None, ctx: Any) -> dict[str, Any]:
    """Enqueue the import of the file ``ref`` unless it is done already; the HTTP answer.

    A finished import answers ``200`` and enqueues nothing. Otherwise the request is
    enqueued under a dedup key per run, so two posts of the same file racing each other
    plan it once; a run that ended ``incomplete`` (a chunk dead-lettered) counts up the
    run, so posting the file again resumes it: only chunks missing from the ledger run.
    """
    fmt = fmt or format_of(ref.get("content_type"), ref.get("name"))
    if fmt is None:
        return {
            "status": 415,
            "body": {
                "error": "send text/csv or application/x-ndjson (or a .csv / .jsonl file)",
                "fields": [{"field": "content-type", "message": "not CSV or JSON lines"}],
            },
        }
    if ref.get("size") == 0:  # nothing to import (and every empty file is the same content: the same import)
        return {
            "status": 400,
            "body": {"error": "the file is empty", "fields": [{"field": "body", "message": "an empty file"}]},
        }
    iid = import_id(ref)
    record = ctx.state.get(GROUP, iid) or {}
    if record.get("status") == "done":
        return {"status": 200, "body": {"import_id": iid, "already": True, **record}}
    run = int(record.get("run", 0)) + (1 if record.get("status") == "incomplete" else 0)
    ctx.enqueue(
        "data.import.requested", {"import_id": iid, "file": ref, "format": fmt, "run": run}, dedup_key=f"import:{iid}:{run}"
    )
    return {"status": 202, "body": {"import_id": iid, "run": run, "trace_id": ctx.trace_id}}
