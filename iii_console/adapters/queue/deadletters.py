"""What a dead letter is made of: the decision, the entry, the event.

Deciding that a message is dead happens in several places (the retry policy, the
throttle, the consumer for poison, rejected and undecidable messages, and for
undecodable bodies); carrying it out happens in one, ``IIIBroker.dead_letter``,
which writes the entry and its ``message.dead_lettered`` event in ``dead.lua``.
The deciders only fill in a :class:`DeadDecision`; the entry and the event are
built here, from the message, so every dead letter has the same fields and
every event the same ``data``.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from dramatiq.common import q_name

from iii_console.adapters.queue.names import parse_queue
from iii_console.core.dlq import DeadLetter
from iii_console.core.eventdata import MessageDeadLettered
from iii_console.core.events import Event, now_ms

#: How a dead message settles its fan-in group: its handler raised (``failed``) or
#: it never ran to a result (``dead``: invalid input, poison, no throttle key).
FaninOutcome = Literal["failed", "dead"]


class DeadDecision(TypedDict):
    """``message.options["iii_outcome"]`` of a message to dead-letter, carried out at its settle."""

    kind: Literal["dead"]
    dlq: str
    error: str
    traceback: str
    attempts: int
    fanin: FaninOutcome
    #: The delivery count that made it poison (``max_deliveries``).
    deliveries: NotRequired[int]


def dead(
    dlq: str, error: str, *, attempts: int, traceback: str = "", fanin: FaninOutcome = "failed", deliveries: int | None = None
) -> DeadDecision:
    decision = DeadDecision(kind="dead", dlq=dlq, error=error, traceback=traceback, attempts=attempts, fanin=fanin)
    if deliveries is not None:
        decision["deliveries"] = deliveries
    return decision


def attempts_of(message: Any) -> int:
    """The run a message is on (1 for the first), whatever a foreign sender put in ``retries``."""
    retries = message.options.get("retries", 0)
    return retries + 1 if isinstance(retries, int) else 1


def describe(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``str()`` itself raises.

    The description goes into events and dead-letter entries; if building it
    raised inside the retry policy, no decision would be written and the
    message would be acked as if it had succeeded.
    """
    try:
        text = str(exc)
    except Exception:
        text = "<str() of the exception failed>"
    return f"{type(exc).__name__}: {text}"


def entry_for(message: Any, decision: DeadDecision) -> DeadLetter:
    """The dead-letter entry of ``message``: its payload, the error, and the original message for replay."""
    opts = message.options
    try:
        topic, step, _ = parse_queue(message.queue_name)
    except ValueError:
        topic, step = opts.get("topic"), None
    now = now_ms()
    original = dict(message.asdict())
    original["options"] = {k: v for k, v in opts.items() if k not in ("iii_outcome", "redis_message_id", "eta")}
    return DeadLetter(
        id=message.message_id,
        dlq=decision["dlq"],
        error=decision["error"],
        traceback=decision["traceback"],
        topic=opts.get("topic", topic),
        step=step,
        queue=q_name(message.queue_name),
        message_id=message.message_id,
        trace_id=opts.get("trace_id", ""),
        data=message.args[0] if message.args else None,
        attempts=decision["attempts"],
        first_failure_ms=opts.get("first_failure_ms", now),
        last_failure_ms=now,
        priority=opts.get("priority", "normal"),
        message=original,
    )


def undecodable_entry(queue_name: str, rid: str, data: bytes, exc: BaseException) -> DeadLetter:
    """The ``quarantine`` entry of a body that is not a message: its raw text, no message to replay."""
    topic = step = None
    try:
        topic, step, _ = parse_queue(queue_name)
    except ValueError:
        pass
    now = now_ms()
    return DeadLetter(
        id=f"undecodable-{rid}",
        dlq="quarantine",
        error=f"undecodable message: {type(exc).__name__}: {exc}",
        topic=topic,
        step=step,
        queue=queue_name,
        attempts=0,
        first_failure_ms=now,
        last_failure_ms=now,
        raw=data.decode("utf-8", errors="replace")[:65536],
    )


def dead_lettered(emitter: Any, entry: DeadLetter, *, deliveries: int | None = None) -> Event:
    """The ``message.dead_lettered`` event of ``entry``: one shape for every reason."""
    data = MessageDeadLettered(dlq=entry.dlq, attempts=entry.attempts)
    if entry.id != entry.message_id:
        data["entry"] = entry.id
    if deliveries is not None:
        data["deliveries"] = deliveries
    where = {"trace_id": entry.trace_id} if entry.trace_id else {}
    return emitter.make(
        "message.dead_lettered",
        **where,
        message_id=entry.message_id,
        step=entry.step,
        topic=entry.topic,
        queue=entry.queue,
        attempt=entry.attempts or None,
        error=entry.error,
        data=data,
    )
