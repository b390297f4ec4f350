from pydantic import BaseModel

from iii_console import HttpRequest, Step, SyncContext, http


class Order(BaseModel):
    sku: str
    qty: int


config = Step(
    name="ReceiveOrder",
    description="Accept an order and queue it",
    triggers=[http("POST", "/orders", body=Order)],
    enqueues=["orders.placed"],
    flows=["orders"],
)


def handler(req: HttpRequest, ctx: SyncContext):
    order: Order = req.body
    ctx.logger.info("order received", sku=order.sku)
    ctx.enqueue("orders.placed", order.model_dump())
    return {"status": 202, "body": {"trace_id": ctx.trace_id}}
