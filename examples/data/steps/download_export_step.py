"""``GET /exports/{id}``: the export's file once it is done (a download), else its status."""

from typing import Any

from iii_console import HttpRequest, Step, SyncContext, http

config = Step(name="DownloadExport", triggers=[http("GET", "/exports/{id}")], flows=["data"])


def handler(req: HttpRequest, ctx: SyncContext) -> Any:
    record = ctx.state.get("exports", req.path_params["id"])
    if record is None:
        return {"status": 404, "body": {"error": f"no export {req.path_params['id']}"}}
    if record["status"] != "done":
        return {"status": 202, "body": record}
    return record["file"]
