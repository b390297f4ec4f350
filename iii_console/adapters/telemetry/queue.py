"""Dramatiq middleware that runs each message attempt inside its span.

Two hooks in two places of the middleware list: the span opens after the
throttle has let the message through (a throttled message never ran, so it has
no span) and closes after the retry policy has decided (so the span records
the retry or the dead letter it led to). The settle itself is written later by
the consumer; the span tells what was decided.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.common import q_name

from iii_console.adapters.queue.names import parse_queue
from iii_console.core.events import now_ms


def queue_wait_ms(options: dict[str, Any], now: int) -> int | None:
    """How long the message waited on its queue since it was due (enqueued, or its delay or retry ran out)."""
    due = max(int(options.get("enqueued_ms") or 0), int(options.get("due_ms") or 0))
    return max(0, now - due) if due else None


class OpenRun(dramatiq.Middleware):
    def __init__(self, tracing: Any):
        self.tracing = tracing

    def before_process_message(self, broker: Any, message: Any) -> None:
        opts = message.options
        try:
            _topic, step, _prio = parse_queue(message.queue_name)
        except ValueError:
            step = None
        run = self.tracing.message_run(
            step=step,
            topic=opts.get("topic"),
            options=opts,
            message_id=message.message_id,
            queue=q_name(message.queue_name),
            attempt=int(opts.get("retries", 0) or 0) + 1,
            queue_wait_ms=queue_wait_ms(opts, now_ms()),
        )
        message.iii_run = run.enter()


class CloseRun(dramatiq.Middleware):
    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        run = getattr(message, "iii_run", None)
        if run is None:
            return
        message.iii_run = None
        outcome = message.options.get("iii_outcome") if exception is not None else None
        if outcome is not None and outcome.get("kind") == "retry":
            run.event(
                "retry",
                {"iii.delay_ms": outcome.get("delay_ms"), "iii.next_attempt": int(message.options.get("retries", 0) or 0) + 1},
            )
        elif outcome is not None:  # a DeadDecision (adapters/queue/deadletters.py)
            run.event("dead_letter", {"iii.dlq": outcome.get("dlq"), "iii.attempts": outcome.get("attempts")})
        run.end(exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        run = getattr(message, "iii_run", None)
        if run is not None:
            message.iii_run = None
            run.event("skipped", {})
            run.end()
