"""Replay dead letters: each entry goes back to its queue as a fresh message.

The new message has its own id, attempts reset, the original trace id (so the
console's timeline continues), and ``replay_of`` pointing at the original id.
Moving it is one atomic ``lua/replay.lua`` call: the entry leaves the dead-letter
store exactly when the new message enters the queue, and a second replay of the
same entry finds nothing to move.

This lives in the core (not the queue adapter) so the console can replay
without importing Dramatiq: the message is written in Dramatiq's JSON message
shape (queue_name, actor_name, args, kwargs, options, message_id,
message_timestamp), which is all its decoder reads.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from iii_console.core import replication
from iii_console.core.dlq import DeadLetter
from iii_console.core.emitter import Emitter
from iii_console.core.errors import IIIError
from iii_console.core.events import now_ms
from iii_console.core.keys import Keys
from iii_console.core.luasrc import core_script

_SCRIPT = core_script("replay")
_DROP = (
    "retries",
    "iii_store_waits",
    "first_failure_ms",
    "iii_outcome",
    "eta",
    "redis_message_id",
    "traceback",
    "requeue_timestamp",
)


class ReplayError(IIIError):
    """This entry cannot be replayed (undecodable original, or already gone)."""


def build_message(entry: DeadLetter) -> dict[str, Any]:
    if not entry.message or not entry.queue:
        raise ReplayError(f"{entry.id}: the original message could not be decoded; it can only be inspected or purged")
    orig = entry.message
    options: dict[str, Any] = {k: v for k, v in (orig.get("options") or {}).items() if k not in _DROP}
    now = now_ms()
    options.update(replay_of=entry.id, replayed_ms=now, redis_message_id=str(uuid.uuid4()), enqueued_ms=now)
    return {
        "queue_name": entry.queue,
        "actor_name": orig["actor_name"],
        "args": list(orig.get("args") or ()),
        "kwargs": orig.get("kwargs") or {},
        "options": options,
        "message_id": str(uuid.uuid4()),
        "message_timestamp": now,
    }


class Replayer:
    def __init__(self, client: redis.Redis, keys: Keys, emitter: Emitter):
        self.keys = keys
        self.emitter = emitter
        self.client = client
        self._replay = client.register_script(_SCRIPT)

    def replay(self, entry: DeadLetter) -> str:
        """Returns the new message id."""
        msg = build_message(entry)
        event = self.emitter.make(
            "message.replayed",
            trace_id=entry.trace_id,
            message_id=msg["message_id"],
            step=entry.step,
            topic=entry.topic,
            queue=entry.queue,
            data={"replay_of": entry.id, "dlq": entry.dlq, "payload": entry.data},
        )
        moved = self.emitter.transition(
            lambda ev: replication.current().script(
                self.client,
                self._replay,
                what=f"the replay of dead letter {entry.id}",
                args=[
                    self.keys.dramatiq_namespace,
                    entry.queue,
                    msg["options"]["redis_message_id"],
                    json.dumps(msg, separators=(",", ":")),
                    self.keys.dlq_entries(entry.dlq),
                    self.keys.dlq(entry.dlq),
                    entry.id,
                    ev,
                ],
            ),
            event,
        )
        if not moved:
            raise ReplayError(f"{entry.id}: no longer in {entry.dlq} (replayed or purged meanwhile)")
        return str(msg["message_id"])
