"""A bare Litestar endpoint that only enqueues a Dramatiq message (served by uvicorn)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from litestar import Litestar, post

from bench.peers.dramatiq_app import work


@post("/messages", status_code=202, sync_to_thread=False)
def send_message(data: dict[str, Any]) -> dict[str, str]:
    message_id = uuid.uuid4().hex
    work.send({"id": message_id, "text": data.get("text", "")})
    return {"id": message_id, "status": "queued"}


@post("/pipeline", status_code=202, sync_to_thread=False)
def pipeline(data: dict[str, Any]) -> dict[str, str]:
    """The knee scenario's HTTP → queue part: the task records (its start − this arrival) and sleeps 20 ms."""
    message_id = uuid.uuid4().hex
    work.send({"id": message_id, "text": data.get("text", ""), "sent": time.time(), "sleep_ms": 20})
    return {"id": message_id, "status": "queued"}


app = Litestar(route_handlers=[send_message, pipeline], openapi_config=None, debug=False)
