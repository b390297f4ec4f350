"""``POST /reports`` ``{"start": "2026-11-01", "end": "2026-11-30"}``: a sales report for a period."""

import datetime as dt
from typing import Any

from pydantic import BaseModel, model_validator
from reportjobs.requests import request

from iii_console import HttpRequest, Step, SyncContext, http


class Period(BaseModel):
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self):
        if self.end < self.start:
            raise ValueError("end is before start")
        if (self.end - self.start).days > 366:
            raise ValueError("a report covers at most a year")
        return self


config = Step(
    name="RequestReport", triggers=[http("POST", "/reports", body=Period)], enqueues=["reports.requested"], flows=["reports"]
)


def handler(req: HttpRequest, ctx: SyncContext) -> Any:
    rid, built = request(req.body.start, req.body.end, ctx, "http")
    if built:
        return {"status": 200, "body": {"report_id": rid, **built}}
    return {"status": 202, "body": {"report_id": rid, "trace_id": ctx.trace_id}}
