"""A Motia stream trigger: every new item of the stream "receipts" in group "shop"."""

from motia import FlowContext, StreamTriggerInput, stateManager, stream

config = {
    "name": "CountReceipts",
    "flows": ["orders"],
    "triggers": [stream("receipts", group_id="shop", condition=lambda event, ctx: event.event.type == "create")],
}


def handler(event: StreamTriggerInput, ctx: FlowContext) -> None:
    stateManager.update("stats", "receipts", [{"type": "increment", "path": "count", "by": 1}])
    ctx.logger.info("receipt counted", {"stream": event.stream_name, "item": event.id, "kind": event.event.type})
