"""State trigger: when a message's status becomes `processed`, send a notification."""

from __future__ import annotations

from typing import Any

from iii_console import Step, state


def became_processed(change: Any) -> bool:
    new, old = change.new or {}, change.old or {}
    return new.get("status") == "processed" and old.get("status") != "processed"


config = {
    "name": "NotifyCompletion",
    "description": "Notifies the recipient when their message is processed",
    "triggers": [{"type": "state", "group": "messages", "condition": became_processed}],
    "flows": ["messaging"],
}


def handler(change: Any, ctx: Any) -> None:
    message = change.new
    ctx.emit(
        "notification.sent",
        data={"channel": "log", "recipient": message.get("recipient"), "message_id": change.key,
              "summary": f"message {change.key[:8]} processed ({message.get('result', {}).get('words', 0)} words)"},
    )
