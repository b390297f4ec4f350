"""POST /orders/:region — an async Motia HTTP step: pydantic body, ApiResponse with headers."""

from typing import Any

from motia import ApiRequest, ApiResponse, FlowContext, QueryParam, http, logger
from pydantic import BaseModel


class NewOrder(BaseModel):
    id: str
    sku: str
    qty: int


config = {
    "name": "PlaceOrder",
    "description": "Accept an order and queue it for fulfilment",
    "flows": ["orders"],
    "triggers": [
        http(
            "POST",
            "/orders/:region",
            body_schema=NewOrder,
            response_schema={201: {"type": "object"}},
            query_params=[QueryParam(name="dry_run", description="answer without queueing")],
        ),
    ],
    "enqueues": [{"topic": "order.placed", "label": "placed"}],
    "virtualSubscribes": ["shop.checkout"],
}


async def handler(request: ApiRequest[Any], ctx: FlowContext[Any]) -> Any:
    order = {**request.body, "region": request.path_params["region"]}
    if request.query_params.get("dry_run"):
        return {"status": 200, "body": {"would_place": order}}
    logger.info("placing", {"order_id": order["id"]})  # the module-level logger, from an async handler
    await ctx.state.set("orders", order["id"], {**order, "status": "placed"})
    await ctx.enqueue({"topic": "order.placed", "data": order})
    ctx.logger.info("order placed", {"order_id": order["id"], "path": ctx.trigger.path, "api": ctx.is_api()})
    return ApiResponse(
        status=201,
        body={"id": order["id"], "trace_id": ctx.trace_id},
        headers={"Location": f"/orders/{order['region']}/{order['id']}"},
    )
