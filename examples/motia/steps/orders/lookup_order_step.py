"""GET /orders/:region/:id — ctx.match dispatching by trigger type, a 404 as a plain dict."""

from typing import Any

from motia import ApiRequest, ApiResponse, FlowContext, http, queue, stateManager

config = {
    "name": "LookupOrder",
    "flows": ["orders"],
    "triggers": [http("GET", "/orders/:region/:id"), queue("order.fulfilled")],
}


def handler(input: Any, ctx: FlowContext[Any]) -> Any:
    def on_http(request: ApiRequest[Any]) -> Any:
        order = stateManager.get("orders", request.path_params["id"])
        if order is None:
            return {"status": 404, "body": {"error": "no such order"}}
        return ApiResponse(status=200, body=order)

    async def on_queue(data: dict[str, Any]) -> None:
        ctx.logger.info("fulfilment seen", {"order_id": data["id"]})

    return ctx.match({"http": on_http, "queue": on_queue})
