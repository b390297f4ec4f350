"""Run a cron step now, outside its schedule (``iii-console cron run``, the console's Cron view).

The tick is a message on the step's own queue like a scheduled one, with
``manual: true`` in its data (so in ``CronTick.manual`` and ``ctx.trigger``) and
its ``cron.fired``. It claims no tick marker, so the schedule fires as usual.
In the core, like replay, so the console can do it without the queue adapter:
the message is written in Dramatiq's JSON shape (see ``core/replay.py``), on the
queue the adapter names ``_cron--{step}--{priority}`` for actor
``{step}:_cron:{priority}`` (``adapters/queue/names.py``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from iii_console.core.emitter import Emitter
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys
from iii_console.core.luasrc import core_script

_SCRIPT = core_script("manual_tick")
CRON_TOPIC = "_cron"


def run_now(
    client: Any, keys: Keys, emitter: Emitter, step: str, expression: str, *, priority: str = "normal", source: str = "cli"
) -> tuple[str, str]:
    """Enqueue a manual tick of ``step``'s cron trigger ``expression``; returns ``(trace id, message id)``."""
    now = now_ms()
    trace_id, message_id, rid = uuid.uuid4().hex, str(uuid.uuid4()), str(uuid.uuid4())
    topic, queue = f"{CRON_TOPIC}.{step}", f"{CRON_TOPIC}--{step}--{priority}"
    data = {"scheduled_ms": now, "fired_ms": now, "expression": expression, "manual": True}
    message = {
        "queue_name": queue,
        "actor_name": f"{step}:{CRON_TOPIC}:{priority}",
        "args": [data],
        "kwargs": {},
        "options": {
            "trace_id": trace_id,
            "topic": topic,
            "priority": priority,
            "source": source,
            "enqueued_ms": now,
            "redis_message_id": rid,
        },
        "message_id": message_id,
        "message_timestamp": now,
    }
    events = [
        emitter.make(
            "message.enqueued",
            trace_id=trace_id,
            message_id=message_id,
            step=step,
            topic=topic,
            queue=queue,
            data={"payload": data, "priority": priority, "delay_ms": 0, "source": source},
        ),
        emitter.make(
            "cron.fired",
            trace_id=trace_id,
            message_id=message_id,
            step=step,
            topic=topic,
            queue=queue,
            data={"expression": expression, "scheduled_ms": now, "fired_ms": now, "drift_ms": 0, "manual": True},
        ),
    ]
    script = client.register_script(_SCRIPT)
    emitter.transition(
        lambda ev: script(args=[keys.dramatiq_namespace, queue, rid, json.dumps(message, separators=(",", ":")), ev]), *events
    )
    return trace_id, message_id
