"""Fan-in groups: the children and the record ``enqueue.lua`` writes with them.

The record holds the completion ready-made (each copy's queue, id and encoded
body, and its ``message.enqueued`` events, with ``RESULT_MARK`` where the result
goes), so the settle that finishes the group (``lua/_fanin.lua``, in
``ack_many.lua`` and ``dead.lua``) can enqueue it in its own script.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from iii_console.adapters.queue.errors import EnqueueError
from iii_console.core.events import now_ms

#: A fan-in group id (part of Redis keys).
GROUP_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
#: Most children one group may have.
GROUP_MAX = 100_000
#: Where a completion's result goes in its pre-built message and event.
RESULT_MARK = "__III_GROUP_RESULT__"


def build_group(
    builder: Any,
    topic: str,
    items: Any,
    *,
    then: str,
    group_id: str | None,
    trace_id: str,
    priority: str | list[str | None] | None,
    source: str | None,
) -> tuple[str, list[Any], list[Any], dict[str, Any]]:
    """A fan-in group: ``(id, the children's script triples, their events, the script's X with the record)``.

    ``priority`` is one priority for every child or a list of one per item, so
    a group can start its cheap, most wanted child first (a thumbnail before
    the large renders) and still complete as one.

    The record holds the completion ready-made (its copies' bodies and
    events, with a mark where the result goes), so the settle that finishes
    the group enqueues it in the same script (``lua/_fanin.lua``).
    """
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
        raise EnqueueError(f"enqueue_group takes a list of the children's data, not {type(items).__name__}")
    items = list(items)
    if len(items) > GROUP_MAX:
        raise EnqueueError(f"a group has at most {GROUP_MAX} children, not {len(items)}")
    if not isinstance(then, str) or not then:
        raise EnqueueError("enqueue_group needs then=<completion topic>")
    priorities = _priorities(priority, len(items))
    gid = uuid.uuid4().hex if group_id is None else group_id
    if not isinstance(gid, str) or not GROUP_ID.fullmatch(gid):
        raise EnqueueError(f"group_id must be 1 to 128 of A-Z a-z 0-9 _ . : -, not {gid!r}")
    done, c_copies, c_prio = builder.build(
        then, RESULT_MARK, trace_id=trace_id, priority=None, delay_ms=0, source=source, options={"group_of": gid}
    )
    if not c_copies:
        raise EnqueueError(f"no step subscribes to the completion topic {then!r}")
    if items and not builder.subscriptions.get(topic):
        # Its children would all be dropped and the group complete at once with total 0.
        raise EnqueueError(f"no step subscribes to the group's topic {topic!r}: its children would run nowhere")
    triples: list[Any] = []
    events: list[Any] = []
    ids: list[str] = []
    for item, item_priority in zip(items, priorities):
        t, copies, prio = builder.build(
            topic, item, trace_id=trace_id, priority=item_priority, delay_ms=0, source=source, options={"iii_group": gid}
        )
        triples.extend(t)
        events.extend(builder.events(topic, item, copies, prio, 0, source, trace_id, group=gid))
        ids.extend(m.message_id for _, m in copies)
    c_events = builder.events(then, RESULT_MARK, c_copies, c_prio, 0, source, trace_id)
    stream = builder.emitter.stream
    ev = json.loads(stream.payload((), c_events)) if stream is not None else {"s": [], "st": [[], [], []]}
    fields: list[Any] = [
        "id",
        gid,
        "topic",
        topic,
        "then",
        then,
        "trace_id",
        trace_id,
        "created_ms",
        now_ms(),
        "total",
        len(ids),
        "pending",
        len(ids),
        "ok",
        0,
        "failed",
        0,
        "dead",
        0,
        "ids",
        json.dumps(ids),
        "done",
        json.dumps([[done[i], done[i + 1], done[i + 2].decode()] for i in range(0, len(done), 3)]),
        "ev",
        json.dumps({"s": ev["s"], "st": ev["st"]}),
    ]
    for mid in ids:
        fields.extend([f"c:{mid}", "pending"])
    return gid, triples, events, {"g": {"key": builder.keys.group(gid), "fields": fields}}


def _priorities(priority: Any, n: int) -> list[str | None]:
    """One priority per child: ``priority`` repeated, or the list given (as long as ``items``)."""
    if priority is None or isinstance(priority, str):
        return [priority] * n
    if not isinstance(priority, (list, tuple)):
        raise EnqueueError(f"priority must be a priority or a list of one per item, not {type(priority).__name__}")
    if len(priority) != n:
        raise EnqueueError(f"priority lists {len(priority)} priorities for {n} items; give one per item")
    return list(priority)


def empty_result(gid: str) -> dict[str, Any]:
    """The completion of a group with no children (enqueued at once)."""
    return {"group_id": gid, "total": 0, "ok": 0, "failed": 0, "dead": 0, "children": [], "failed_ids": [], "dead_ids": []}
