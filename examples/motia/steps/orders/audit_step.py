"""multi_trigger_step: one handler per trigger type, registered with on_queue / on_http."""

from typing import Any

from motia import ApiRequest, ApiResponse, FlowContext, http, multi_trigger_step, queue, stateManager

config = {
    "name": "Audit",
    "flows": ["orders"],
    "triggers": [queue("order.fulfilled"), http("GET", "/audit")],
}


async def count(data: dict[str, Any], ctx: FlowContext[Any]) -> None:
    stateManager.update("audit", "fulfilled", [{"type": "increment", "path": "n", "by": 1}])


async def report(request: ApiRequest[Any], ctx: FlowContext[Any]) -> ApiResponse[Any]:
    return ApiResponse(status=200, body=stateManager.get("audit", "fulfilled") or {"n": 0})


handler = multi_trigger_step(config).on_queue(count).on_http(report).handlers().handler
