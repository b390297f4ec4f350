"""Queue worker for message.sent: drives the message's status through its lifecycle.

    queued -> processing -> processed
                         -> retrying -> processing -> ...   (an attempt failed; the queue retries it)
                         -> failed                          (the last attempt failed; it is in message.sent.dlq)

Errors are recorded in state (with the attempt count) and re-raised, so the queue's
strategy in iii-config.yaml (retries with backoff, then the dead-letter queue) takes over.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from iii_console import Step, SyncContext, queue


class MessageSent(BaseModel):
    id: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1)
    #: Test hook: fail this many attempts before succeeding.
    fail_times: int = Field(default=0, ge=0)


config = Step(
    name="ProcessMessage",
    description="Processes queued messages in the background",
    # Data that does not fit MessageSent goes straight to the dead-letter queue: retrying cannot fix it.
    triggers=[queue("message.sent", input=MessageSent)],
    flows=["messaging"],
)

#: Simulated work per priority, in seconds: an urgent message takes the fast (in real life,
#: the dearer) path, a low-priority one the slow lane. The queue already delivers high
#: before normal before low; this is what the step itself does differently.
WORK_S = {"high": 0.005, "normal": 0.02, "low": 0.05}


def handler(message: MessageSent, ctx: SyncContext) -> None:
    now = _now_ms()
    record = ctx.state.get("messages", message.id)
    if record is None:
        # Enqueued straight to the topic (`iii-console send --topic`): start its record here.
        record = {
            "id": message.id,
            "text": message.text,
            "priority": ctx.trigger.get("priority", "normal"),
            "status": "queued",
            "attempts": 0,
            "trace_id": ctx.trace_id,
            "created_ms": now,
        }
        ctx.state.set("messages", message.id, record)
    elif record.get("status") == "processed":
        # Delivery is at least once: a copy redelivered after a worker died must not
        # process (and notify) a second time.
        ctx.logger.info("already processed; skipping the redelivered copy", id=message.id)
        return
    ctx.state.update(
        "messages",
        message.id,
        [
            {"type": "set", "path": "status", "value": "processing"},
            {"type": "increment", "path": "attempts", "by": 1},
            {"type": "set", "path": "started_ms", "value": now},
        ],
    )
    try:
        if ctx.attempt <= message.fail_times:
            raise RuntimeError(f"simulated failure on attempt {ctx.attempt}")
        # The priority the queue delivered it with, i.e. what the sender asked for.
        work_s = WORK_S[ctx.trigger.get("priority", "normal")]
        time.sleep(work_s)
        result = {"length": len(message.text), "words": len(message.text.split())}
    except Exception as exc:
        final = ctx.attempt >= ctx.max_attempts or getattr(exc, "retryable", True) is False
        ctx.state.update(
            "messages",
            message.id,
            [
                {"type": "set", "path": "status", "value": "failed" if final else "retrying"},
                {"type": "set", "path": "error", "value": f"{type(exc).__name__}: {exc}"},
                *([{"type": "set", "path": "finished_ms", "value": _now_ms()}] if final else []),
            ],
        )
        raise
    ctx.state.update(
        "messages",
        message.id,
        [
            {"type": "set", "path": "status", "value": "processed"},
            {"type": "set", "path": "result", "value": result},
            {"type": "set", "path": "finished_ms", "value": _now_ms()},
            {"type": "remove", "path": "error"},
        ],
    )
    ctx.logger.info("message processed", id=message.id, work_ms=round(work_s * 1000), **result)


def _now_ms() -> int:
    return int(time.time() * 1000)
