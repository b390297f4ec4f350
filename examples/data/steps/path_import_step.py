"""``POST /imports/from-path``: a file already on the server, under the imports folder (``DATA_IMPORT_DIR``)."""

import os
from pathlib import Path
from typing import Any

from datajobs.db import PROJECT
from datajobs.records import format_of
from datajobs.start import start
from pydantic import BaseModel

from iii_console import HttpRequest, Step, SyncContext, http


class FromPath(BaseModel):
    path: str


config = Step(
    name="PathImport",
    triggers=[http("POST", "/imports/from-path", body=FromPath)],
    enqueues=["data.import.requested"],
    flows=["data"],
)


def handler(req: HttpRequest, ctx: SyncContext) -> Any:
    # Only files under one folder: a request must not read whatever the server can.
    root = Path(os.environ.get("DATA_IMPORT_DIR") or PROJECT / "imports").resolve()
    try:
        path = (root / req.body.path).resolve()
        usable = path.is_relative_to(root) and path.is_file()
    except (ValueError, OSError):  # a NUL in it, a name longer than the file system takes
        usable = False
    if not usable:
        return {
            "status": 400,
            "body": {
                "error": f"no such file under the imports folder {root}",
                "fields": [{"field": "path", "message": "not a file under the imports folder"}],
            },
        }
    fmt = format_of(None, path.name)
    if fmt is None:
        return {
            "status": 400,
            "body": {
                "error": "the file must end in .csv, .jsonl or .ndjson",
                "fields": [{"field": "path", "message": "not a .csv or .jsonl file"}],
            },
        }
    return start(ctx.blobs.put(path, content_type="text/csv" if fmt == "csv" else "application/x-ndjson"), fmt, ctx)
