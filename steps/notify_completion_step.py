"""State trigger: when a message's status becomes `processed`, send a notification."""

from __future__ import annotations

from iii_console import StateChange, SyncContext


def became_processed(change: StateChange) -> bool:
    """True only on the transition: a later write to a processed message (or deleting
    it) must not notify again."""
    new, old = change.new or {}, change.old or {}
    return new.get("status") == "processed" and old.get("status") != "processed"


# A Motia-shaped dict; `Step(..., triggers=[state("messages", condition=became_processed)])` is the same.
config = {
    "name": "NotifyCompletion",
    "description": "Notifies the recipient when their message is processed",
    "triggers": [{"type": "state", "group": "messages", "condition": became_processed}],
    "flows": ["messaging"],
}


def handler(change: StateChange, ctx: SyncContext) -> None:
    message = change.new
    ctx.emit(
        "notification.sent",
        data={
            "channel": "log",
            "recipient": message.get("recipient"),
            "message_id": change.key,
            "summary": f"message {change.key[:8]} processed ({message.get('result', {}).get('words', 0)} words)",
        },
    )
