"""queue order.placed — a sync Motia queue step whose work runs in a thread it starts (and a
check on a shared thread pool): the module-level logger, stateManager and enqueue act on the
run from there too."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from motia import FlowContext, enqueue, logger, queue, stateManager

ORDER = {"type": "object", "required": ["id", "qty"], "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}}}

POOL = ThreadPoolExecutor(max_workers=2)  # shared by every run of this step

config = {
    "name": "FulfilOrder",
    "flows": ["orders"],
    "triggers": [queue("order.placed", input=ORDER, condition=lambda order, ctx: order["qty"] > 0)],
    "enqueues": [{"topic": "order.fulfilled", "label": "fulfilled", "conditional": True}],
    "virtualEnqueues": ["warehouse.pick-list"],
}


def handler(order: dict[str, Any], ctx: FlowContext[Any]) -> None:
    def work() -> None:
        logger.info("fulfilling", {"order_id": order["id"], "topic": ctx.trigger.topic, "qty": order["qty"]})
        stateManager.update("orders", order["id"], [{"type": "set", "path": "status", "value": "fulfilled"}])
        enqueue({"topic": "order.fulfilled", "data": {"id": order["id"]}})

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    POOL.submit(logger.info, "checked", {"order_id": order["id"]}).result()
