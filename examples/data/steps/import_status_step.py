"""``GET /imports/{id}``: the import's record; ``GET /imports/{id}/errors``: its errors file (CSV)."""

from typing import Any

from iii_console import HttpRequest, Step, SyncContext, http

from datajobs.start import GROUP

config = Step(name="ImportStatus", triggers=[http("GET", "/imports/{id}"), http("GET", "/imports/{id}/errors")], flows=["data"])


def handler(req: HttpRequest, ctx: SyncContext) -> Any:
    record = ctx.state.get(GROUP, req.path_params["id"])
    if record is None:
        return {"status": 404, "body": {"error": f"no import {req.path_params['id']}"}}
    if req.path.endswith("/errors"):
        if "errors_file" not in record:
            return {"status": 409, "body": {"error": "the import has not finished", "status": record["status"]}}
        return record["errors_file"]
    return {"status": 200, "body": record}
