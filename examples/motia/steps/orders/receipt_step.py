"""A condition-only Motia state trigger: fires for any group, the condition picks the changes."""

from motia import StateTriggerInput, Stream, logger, state

receipts: Stream[dict] = Stream("receipts")


def fulfilled(change: StateTriggerInput, ctx) -> bool:
    return (
        change.group_id == "orders"
        and (change.new_value or {}).get("status") == "fulfilled"
        and (change.old_value or {}).get("status") != "fulfilled"
    )


config = {
    "name": "WriteReceipt",
    "flows": ["orders"],
    "triggers": [state(condition=fulfilled)],
}


def handler(change: StateTriggerInput) -> None:
    receipts.set("shop", change.item_id, {"order_id": change.item_id, "qty": change.new_value["qty"]})
    logger.info("receipt written", {"order_id": change.item_id, "old_status": change.old_value["status"]})
