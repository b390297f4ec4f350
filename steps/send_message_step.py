"""POST /messages: validate, record the message as queued, enqueue it, answer 202."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from iii_console import Context, HttpRequest, Step, http


class MessageIn(BaseModel):
    # A misspelt field ("txt", "prority") is a 400 naming it, not a silent default;
    # strict: `true` is not a count and 7 is not a text.
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, max_length=10_000)
    priority: Literal["high", "normal", "low"] = "normal"
    recipient: str | None = Field(default=None, max_length=320)
    #: Test hook: the worker fails this many attempts before succeeding.
    fail_times: int = Field(default=0, ge=0, le=100)


config = Step(
    name="SendMessage",
    description="Receives a message over HTTP and queues it for background processing",
    triggers=[http("POST", "/messages", body=MessageIn)],
    enqueues=["message.sent"],
    flows=["messaging"],
)


async def handler(request: HttpRequest, ctx: Context) -> dict[str, Any]:
    body: MessageIn = request.body
    message_id = uuid.uuid4().hex
    # The record goes in before the message: a worker can pick the message up
    # before this handler returns, and it expects to find the record.
    await ctx.state.set(
        "messages",
        message_id,
        {
            "id": message_id,
            "text": body.text,
            "recipient": body.recipient,
            "priority": body.priority,
            "status": "queued",
            "attempts": 0,
            "trace_id": ctx.trace_id,
            "created_ms": int(time.time() * 1000),
        },
    )
    await ctx.enqueue(
        "message.sent", {"id": message_id, "text": body.text, "fail_times": body.fail_times}, priority=body.priority
    )
    ctx.logger.info("message accepted", id=message_id, priority=body.priority)
    return {"status": 202, "body": {"id": message_id, "trace_id": ctx.trace_id, "status": "queued"}}
