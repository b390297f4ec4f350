"""``POST /exports`` ``{"table": "orders", "format": "csv"}``: export a table in the background."""

import uuid
from typing import Any, Literal

from datajobs.db import EXPORTABLE
from pydantic import BaseModel

from iii_console import HttpRequest, Step, SyncContext, http


class ExportRequest(BaseModel):
    table: str
    format: Literal["csv", "jsonl"] = "csv"


config = Step(
    name="RequestExport",
    triggers=[http("POST", "/exports", body=ExportRequest)],
    enqueues=["data.export.requested"],
    flows=["data"],
)


def handler(req: HttpRequest, ctx: SyncContext) -> Any:
    if req.body.table not in EXPORTABLE:
        return {
            "status": 400,
            "body": {
                "error": f"tables that export: {', '.join(EXPORTABLE)}",
                "fields": [{"field": "table", "message": f"no table {req.body.table!r}"}],
            },
        }
    export_id = uuid.uuid4().hex[:16]
    ctx.state.set("exports", export_id, {"status": "queued", "table": req.body.table, "format": req.body.format})
    ctx.enqueue("data.export.requested", {"export_id": export_id, "table": req.body.table, "format": req.body.format})
    return {"status": 202, "body": {"export_id": export_id, "trace_id": ctx.trace_id}}
