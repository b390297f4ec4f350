"""Queue worker for message.sent: drives the message's status through its lifecycle.

Errors are recorded in state and re-raised, so the queue's strategy (retries,
then the dead-letter queue) takes over.
"""

from __future__ import annotations

import time
from typing import Any

from iii_console import Step, queue

config = Step(
    name="ProcessMessage",
    description="Processes queued messages in the background",
    triggers=[queue("message.sent")],
    flows=["messaging"],
)

#: Simulated work per priority, in seconds: urgent messages get the short path.
WORK_S = {"high": 0.005, "normal": 0.02, "low": 0.05}


def handler(data: dict[str, Any], ctx: Any) -> None:
    message_id = data["id"]
    current = ctx.state.get("messages", message_id)
    if current is None:
        # Enqueued straight to the topic (e.g. `iii-console send --topic`): start its record here.
        current = {"id": message_id, "text": data["text"], "priority": "normal", "status": "queued", "attempts": 0, "trace_id": ctx.trace_id}
        ctx.state.set("messages", message_id, current)
    priority = current.get("priority", "normal")
    ctx.state.update("messages", message_id, [
        {"type": "set", "path": "status", "value": "processing"},
        {"type": "increment", "path": "attempts", "by": 1},
    ])
    try:
        if ctx.attempt <= int(data.get("fail_times", 0)):
            raise RuntimeError(f"simulated failure on attempt {ctx.attempt}")
        time.sleep(WORK_S.get(priority, 0.02))
        result = {"length": len(data["text"]), "words": len(data["text"].split())}
    except Exception as exc:
        ctx.state.update("messages", message_id, [
            {"type": "set", "path": "status", "value": "failed"},
            {"type": "set", "path": "error", "value": f"{type(exc).__name__}: {exc}"},
        ])
        raise
    ctx.state.update("messages", message_id, [
        {"type": "set", "path": "status", "value": "processed"},
        {"type": "set", "path": "result", "value": result},
        {"type": "set", "path": "processed_ms", "value": int(time.time() * 1000)},
        {"type": "remove", "path": "error"},
    ])
    ctx.logger.info("message processed", id=message_id, **result)
