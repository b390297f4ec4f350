"""``POST /imports``: a CSV or JSON-lines file as the request body, streamed into the blob store."""

from typing import Any

from datajobs.start import start

from iii_console import HttpRequest, Step, SyncContext, http

config = Step(
    name="UploadImport",
    triggers=[
        http(
            "POST",
            "/imports",
            accept=["text/csv", "application/csv", "application/x-ndjson", "application/jsonl"],
            max_body_bytes=500_000_000,
        )
    ],
    enqueues=["data.import.requested"],
    flows=["data"],
)


def handler(req: HttpRequest, ctx: SyncContext) -> Any:
    return start(req.body, None, ctx)
