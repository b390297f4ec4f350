from pydantic import BaseModel

from iii_console import Step, SyncContext, queue


class Order(BaseModel):
    sku: str
    qty: int


config = Step(
    name="PlaceOrder",
    description="Keep each order's running quantity per SKU",
    triggers=[queue("orders.placed", input=Order)],
    flows=["orders"],
)


def handler(order: Order, ctx: SyncContext):
    if order.qty <= 0:
        raise ValueError(f"quantity must be positive, got {order.qty}")
    ctx.state.update("orders", order.sku, [{"type": "increment", "path": "qty", "by": order.qty}])
    ctx.logger.info("order placed", sku=order.sku, qty=order.qty)
