"""``GET /reports/{id}`` (its record), ``/reports/{id}/pdf``, ``/html`` and ``/chart`` (the files)."""

from typing import Any

from reportjobs.requests import GROUP

from iii_console import HttpRequest, Step, SyncContext, download, http

config = Step(name="GetReport", triggers=[http("GET", "/reports/{id}"), http("GET", "/reports/{id}/{file}")], flows=["reports"])

FILES = {"pdf", "html", "chart"}


def handler(req: HttpRequest, ctx: SyncContext) -> Any:
    rid = req.path_params["id"]
    report = ctx.state.get(GROUP, rid)
    if report is None:
        return {"status": 404, "body": {"error": f"no report {rid}: POST /reports to build it"}}
    which = req.path_params.get("file")
    if which is None:
        return {"status": 200, "body": report}
    if which not in FILES:
        return {"status": 404, "body": {"error": f"a report has {', '.join(sorted(FILES))}, not {which!r}"}}
    return download(report[which], inline=True)
