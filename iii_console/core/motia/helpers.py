"""Motia's trigger helpers, step builders and guards (``triggers.py``, ``step.py``,
``multi_trigger.py``, ``guards.py``), building Motia's trigger objects."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iii_console.core.motia.types import ApiTrigger, CronTrigger, QueueTrigger, StateTrigger, Step, StepConfig, StreamTrigger


def http(
    method: str,
    path: str,
    *,
    body_schema: Any = None,
    response_schema: dict[int, Any] | None = None,
    query_params: list[Any] | None = None,
    middleware: list[Any] | None = None,
    condition: Any = None,
) -> ApiTrigger:
    return ApiTrigger(
        path=path,
        method=method,
        condition=condition,
        body_schema=body_schema,
        response_schema=response_schema,
        query_params=query_params,
        middleware=middleware,
    )


def api(method: str, path: str, **kw: Any) -> ApiTrigger:
    """Motia's deprecated name for :func:`http`."""
    return http(method, path, **kw)


def queue(topic: str, *, input: Any = None, config: Any = None, condition: Any = None) -> QueueTrigger:
    return QueueTrigger(topic=topic, condition=condition, input=input, config=config)


def cron(expression: str, *, condition: Any = None) -> CronTrigger:
    return CronTrigger(expression=expression, condition=condition)


def state(*, condition: Any = None) -> StateTrigger:
    return StateTrigger(condition=condition)


def stream(stream_name: str, *, group_id: str | None = None, item_id: str | None = None, condition: Any = None) -> StreamTrigger:
    return StreamTrigger(stream_name=stream_name, group_id=group_id, item_id=item_id, condition=condition)


@dataclass
class StepDefinition:
    """A config with its handler: ``config = step({...}, handler)`` or ``step({...}).handle(fn)``."""

    config: StepConfig
    handler: Callable[..., Any]


class StepBuilder:
    def __init__(self, config: StepConfig) -> None:
        self.config = config

    def handle(self, handler: Callable[..., Any]) -> StepDefinition:
        return StepDefinition(config=self.config, handler=handler)


def step(config: StepConfig | dict[str, Any], handler: Callable[..., Any] | None = None) -> StepDefinition | StepBuilder:
    if not isinstance(config, StepConfig):
        config = StepConfig.model_validate(config)
    return StepDefinition(config=config, handler=handler) if handler is not None else StepBuilder(config)


async def _call(handler: Callable[..., Any], *args: Any) -> Any:
    out = handler(*args)
    return await out if inspect.isawaitable(out) else out


class MultiTriggerStepBuilder:
    """``multi_trigger_step(config).on_queue(fn).on_http(fn).handlers()``: one handler per trigger type."""

    def __init__(self, config: StepConfig) -> None:
        self.config = config
        self._handlers: dict[str, Callable[..., Any]] = {}

    def _unified(self) -> Callable[..., Any]:
        handlers = dict(self._handlers)

        async def unified_handler(input_data: Any, ctx: Any) -> Any:
            kind = ctx.trigger.type
            if kind in handlers:
                return await (_call(handlers[kind], ctx) if kind == "cron" else _call(handlers[kind], input_data, ctx))
            raise RuntimeError(f"No handler defined for trigger type: {kind}. Available handlers: {', '.join(handlers)}")

        return unified_handler

    def on_queue(self, handler: Callable[..., Any]) -> MultiTriggerStepBuilder:
        self._handlers["queue"] = handler
        return self

    def on_http(self, handler: Callable[..., Any]) -> MultiTriggerStepBuilder:
        self._handlers["http"] = handler
        return self

    def on_cron(self, handler: Callable[..., Any]) -> MultiTriggerStepBuilder:
        self._handlers["cron"] = handler
        return self

    def on_state(self, handler: Callable[..., Any]) -> MultiTriggerStepBuilder:
        self._handlers["state"] = handler
        return self

    def on_stream(self, handler: Callable[..., Any]) -> MultiTriggerStepBuilder:
        self._handlers["stream"] = handler
        return self

    def handlers(self, handlers: dict[str, Callable[..., Any]] | None = None) -> StepDefinition:
        if handlers:
            self._handlers.update(handlers)
        return StepDefinition(config=self.config, handler=self._unified())


def multi_trigger_step(config: StepConfig | dict[str, Any]) -> MultiTriggerStepBuilder:
    if not isinstance(config, StepConfig):
        config = StepConfig.model_validate(config)
    return MultiTriggerStepBuilder(config)


def is_api_trigger(trigger: Any) -> bool:
    return isinstance(trigger, ApiTrigger)


def is_queue_trigger(trigger: Any) -> bool:
    return isinstance(trigger, QueueTrigger)


def is_cron_trigger(trigger: Any) -> bool:
    return isinstance(trigger, CronTrigger)


def is_state_trigger(trigger: Any) -> bool:
    return isinstance(trigger, StateTrigger)


def is_stream_trigger(trigger: Any) -> bool:
    return isinstance(trigger, StreamTrigger)


def is_api_step(step: Step) -> bool:
    return any(is_api_trigger(t) for t in step.config.triggers)


def is_queue_step(step: Step) -> bool:
    return any(is_queue_trigger(t) for t in step.config.triggers)


def is_cron_step(step: Step) -> bool:
    return any(is_cron_trigger(t) for t in step.config.triggers)


def is_state_step(step: Step) -> bool:
    return any(is_state_trigger(t) for t in step.config.triggers)


def is_stream_step(step: Step) -> bool:
    return any(is_stream_trigger(t) for t in step.config.triggers)


def get_api_triggers(step: Step) -> list[ApiTrigger]:
    return [t for t in step.config.triggers if isinstance(t, ApiTrigger)]


def get_queue_triggers(step: Step) -> list[QueueTrigger]:
    return [t for t in step.config.triggers if isinstance(t, QueueTrigger)]


def get_cron_triggers(step: Step) -> list[CronTrigger]:
    return [t for t in step.config.triggers if isinstance(t, CronTrigger)]


def get_state_triggers(step: Step) -> list[StateTrigger]:
    return [t for t in step.config.triggers if isinstance(t, StateTrigger)]


def get_stream_triggers(step: Step) -> list[StreamTrigger]:
    return [t for t in step.config.triggers if isinstance(t, StreamTrigger)]
