"""``GET /exports/{id}``: the export's file once it is done (a download), else its status."""

from iii_console import Step, http

config = Step(name="DownloadExport", triggers=[http("GET", "/exports/{id}")], flows=["data"])


def handler(req, ctx):
    record = ctx.state.get("exports", req.path_params["id"])
    if record is None:
        return {"status": 404, "body": {"error": f"no export {req.path_params['id']}"}}
    if record["status"] != "done":
        return {"status": 202, "body": record}
    return record["file"]
