"""Motia 1.0's Python API on iii-console: ``import motia`` in a step file, without the engine.

The step loader makes this package importable as ``motia`` (and ``motia.types``,
``motia.triggers``...) when the real ``motia`` package is not installed; see
:func:`iii_console.core.motia.adapt.install`. Names that need Motia's engine (its client,
channels, tracing) raise :class:`Unsupported` when a step imports them, so the step
fails when it loads, with the file, the line and what to use here instead.
"""

from __future__ import annotations

from typing import Any

from iii_console.core.motia.helpers import (
    MultiTriggerStepBuilder,
    StepBuilder,
    StepDefinition,
    api,
    cron,
    get_api_triggers,
    get_cron_triggers,
    get_queue_triggers,
    get_state_triggers,
    get_stream_triggers,
    http,
    is_api_step,
    is_api_trigger,
    is_cron_step,
    is_cron_trigger,
    is_queue_step,
    is_queue_trigger,
    is_state_step,
    is_state_trigger,
    is_stream_step,
    is_stream_trigger,
    multi_trigger_step,
    queue,
    state,
    step,
    stream,
)
from iii_console.core.motia.run import Logger, StateManager, Stream, enqueue
from iii_console.core.motia.types import (
    ApiMiddleware,
    ApiRequest,
    ApiResponse,
    ApiRouteMethod,
    ApiTrigger,
    CronTrigger,
    Enqueue,
    Enqueuer,
    FlowContext,
    MotiaHttpArgs,
    MotiaHttpRequest,
    MotiaHttpResponse,
    QueryParam,
    QueueTrigger,
    StateTrigger,
    StateTriggerInput,
    Step,
    StepConfig,
    StreamAuthInput,
    StreamAuthResult,
    StreamConfig,
    StreamEvent,
    StreamSubscription,
    StreamTrigger,
    StreamTriggerInput,
    TriggerCondition,
    TriggerConfig,
    TriggerInfo,
    TriggerInput,
)

logger = Logger()
stateManager = StateManager()


class Unsupported(ImportError):
    """A Motia name that needs Motia's engine; the message says what to use instead."""


#: Names of motia's ``__init__`` that need the engine, and what to do here instead.
UNSUPPORTED = {
    "init_iii": "the engine client: iii-console runs the steps itself (`iii-console` or `iii-console --no-ui`); remove the call",
    "get_instance": "the engine client: use the module-level logger, enqueue, stateManager and Stream, or the handler's ctx",
    "ChannelReader": "channels (streamed request bodies): HTTP steps here take a JSON body, read whole (ApiRequest.body)",
    "ChannelWriter": "channels (streamed responses): return ApiResponse(status=..., body=..., headers=...)",
    "Motia": "the engine runtime: iii-console discovers steps/**/*_step.py itself",
    "setup_step_endpoint": "the engine's step endpoint: `iii-console steps --json` lists the steps",
    "generate_step_id": "engine step ids: steps are known by their name here",
    "schema_to_json_schema": "Motia's schema export: /openapi.json on the running server describes the HTTP steps",
    "tracing": "OpenTelemetry tracing: every run's events carry its trace id (iii-console tail --trace ID)",
}


def __getattr__(name: str) -> Any:
    if name in UNSUPPORTED:
        raise Unsupported(f"motia.{name} is not available on iii-console ({UNSUPPORTED[name]})", name="motia")
    raise AttributeError(f"module 'motia' has no attribute {name!r}")


__all__ = [
    "ApiMiddleware",
    "ApiRequest",
    "ApiResponse",
    "ApiRouteMethod",
    "ApiTrigger",
    "CronTrigger",
    "Enqueue",
    "Enqueuer",
    "FlowContext",
    "MotiaHttpArgs",
    "MotiaHttpRequest",
    "MotiaHttpResponse",
    "MultiTriggerStepBuilder",
    "QueryParam",
    "QueueTrigger",
    "StateManager",
    "StateTrigger",
    "StateTriggerInput",
    "Step",
    "StepBuilder",
    "StepConfig",
    "StepDefinition",
    "Stream",
    "StreamAuthInput",
    "StreamAuthResult",
    "StreamConfig",
    "StreamEvent",
    "StreamSubscription",
    "StreamTrigger",
    "StreamTriggerInput",
    "TriggerCondition",
    "TriggerConfig",
    "TriggerInfo",
    "TriggerInput",
    "api",
    "cron",
    "enqueue",
    "get_api_triggers",
    "get_cron_triggers",
    "get_queue_triggers",
    "get_state_triggers",
    "get_stream_triggers",
    "http",
    "is_api_step",
    "is_api_trigger",
    "is_cron_step",
    "is_cron_trigger",
    "is_queue_step",
    "is_queue_trigger",
    "is_state_step",
    "is_state_trigger",
    "is_stream_step",
    "is_stream_trigger",
    "logger",
    "multi_trigger_step",
    "queue",
    "state",
    "stateManager",
    "step",
    "stream",
]
