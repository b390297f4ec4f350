"""Motia 1.0's public types, as ``motia/types.py`` declares them, without the engine.

Field names, aliases and defaults follow Motia's so step files that build or inspect
them behave the same; what a step may do with them at run time is decided by
:mod:`iii_console.core.motia.adapt`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

TInput = TypeVar("TInput")
TOutput = TypeVar("TOutput")
TBody = TypeVar("TBody")
TEnqueueData = TypeVar("TEnqueueData")

ApiRouteMethod = Literal["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
TriggerInput = Any


class TriggerInfo(BaseModel):
    """Which trigger fired: ``ctx.trigger.type``, ``.topic``, ``.path``, ``.method``, ``.expression``."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["http", "queue", "cron", "state", "stream"]
    index: int | None = None
    path: str | None = None
    method: str | None = None
    topic: str | None = None
    expression: str | None = None


class ApiRequest(BaseModel, Generic[TBody]):
    """An HTTP step's input."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    path_params: dict[str, str] = Field(default_factory=dict, serialization_alias="pathParams")
    query_params: dict[str, str | list[str]] = Field(default_factory=dict, serialization_alias="queryParams")
    body: TBody | None = None
    headers: dict[str, str | list[str]] = Field(default_factory=dict)


class ApiResponse(BaseModel, Generic[TOutput]):
    """An HTTP step's answer: ``ApiResponse(status=201, body={...}, headers={...})``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    status: int
    body: Any
    headers: dict[str, str] = Field(default_factory=dict)


class MotiaHttpRequest(BaseModel, Generic[TBody]):
    """The request half of Motia's streamed HTTP arguments (only the type; see ``MotiaHttpArgs``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    path_params: dict[str, str] = Field(default_factory=dict)
    query_params: dict[str, str | list[str]] = Field(default_factory=dict)
    body: TBody | None = None
    headers: dict[str, str | list[str]] = Field(default_factory=dict)
    method: str = ""
    request_body: Any = None


class MotiaHttpResponse:
    """Motia's streamed HTTP response. Streaming needs the engine's channels: a step whose
    handler takes ``MotiaHttpArgs`` is refused when it loads."""

    def __init__(self, writer: Any = None) -> None:
        self._writer = writer


class MotiaHttpArgs(BaseModel, Generic[TBody]):
    """Motia's streamed HTTP arguments (request + response writer); the type only."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    request: MotiaHttpRequest[TBody]
    response: Any = None


class QueryParam(BaseModel):
    name: str
    description: str


class Enqueue(BaseModel):
    topic: str
    label: str | None = None
    conditional: bool = False


class QueueConfig(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    type: Literal["fifo", "standard"] = "standard"
    max_retries: int = Field(default=3, alias="maxRetries")
    visibility_timeout: int = Field(default=30, alias="visibilityTimeout")
    delay_seconds: int = Field(default=0, alias="delaySeconds")
    concurrency: int | None = None
    backoff_type: str | None = Field(default=None, alias="backoffType")
    backoff_delay_ms: int | None = Field(default=None, alias="backoffDelayMs")


TriggerCondition = Callable[..., "bool | Awaitable[bool]"]


class _Trigger(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)


class QueueTrigger(_Trigger):
    type: Literal["queue"] = "queue"
    topic: str
    condition: Any = None
    input: Any = None
    config: Any = None


class ApiTrigger(_Trigger):
    type: Literal["http"] = "http"
    path: str
    method: str
    condition: Any = None
    middleware: list[Any] | None = None
    body_schema: Any = Field(default=None, alias="bodySchema")
    response_schema: dict[int, Any] | None = Field(default=None, alias="responseSchema")
    query_params: list[Any] | None = Field(default=None, alias="queryParams")


class CronTrigger(_Trigger):
    type: Literal["cron"] = "cron"
    expression: str
    condition: Any = None


class StateTrigger(_Trigger):
    type: Literal["state"] = "state"
    condition: Any = None


class StreamTrigger(_Trigger):
    type: Literal["stream"] = "stream"
    stream_name: str = Field(alias="streamName")
    group_id: str | None = Field(default=None, alias="groupId")
    item_id: str | None = Field(default=None, alias="itemId")
    condition: Any = None


TriggerConfig = QueueTrigger | ApiTrigger | CronTrigger | StateTrigger | StreamTrigger


class StateTriggerInput(BaseModel):
    """A state step's input: ``input.group_id``, ``.item_id``, ``.old_value``, ``.new_value``."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["state"] = "state"
    group_id: str = Field(alias="groupId")
    item_id: str = Field(alias="itemId")
    old_value: Any | None = Field(default=None, alias="oldValue")
    new_value: Any | None = Field(default=None, alias="newValue")


class StreamEvent(BaseModel):
    type: Literal["create", "update", "delete"]
    data: Any


class StreamTriggerInput(BaseModel):
    """A stream step's input: which item of which stream changed, and how."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["stream"] = "stream"
    timestamp: int
    stream_name: str = Field(alias="streamName")
    group_id: str = Field(alias="groupId")
    id: str
    event: StreamEvent


class StepConfig(BaseModel):
    """A Motia step's ``config`` (dict keys in snake_case or Motia's camelCase)."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    name: str
    triggers: list[Any] = Field(default_factory=list)
    enqueues: list[Any] = Field(default_factory=list)
    virtual_enqueues: list[Any] | None = Field(default=None, alias="virtualEnqueues")
    virtual_subscribes: list[str] | None = Field(default=None, alias="virtualSubscribes")
    description: str | None = None
    flows: list[str] | None = None
    include_files: list[str] | None = Field(default=None, alias="includeFiles")


class Step(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    file_path: str = Field(alias="filePath")
    config: StepConfig


class FlowContext(BaseModel, Generic[TEnqueueData]):
    """A handler's second argument: the run's trace id, which trigger fired, and the run's
    logger, enqueue, state and streams (the same as the module-level ones)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trace_id: str
    trigger: TriggerInfo
    input_value: Any = None
    logger: Any = None
    state: Any = None
    streams: Any = None
    enqueue_fn: Any = Field(default=None, exclude=True)

    def enqueue(self, event: dict[str, Any]) -> Any:
        """``ctx.enqueue({"topic": ..., "data": ...})``; awaitable in an ``async def`` handler."""
        return self.enqueue_fn(event)

    def is_queue(self) -> bool:
        return self.trigger.type == "queue"

    def is_api(self) -> bool:
        return self.trigger.type == "http"

    def is_cron(self) -> bool:
        return self.trigger.type == "cron"

    def is_state(self) -> bool:
        return self.trigger.type == "state"

    def is_stream(self) -> bool:
        return self.trigger.type == "stream"

    def get_data(self) -> Any:
        if self.is_cron():
            return None
        if isinstance(self.input_value, ApiRequest):
            return self.input_value.body
        return self.input_value

    async def match(self, handlers: dict[str, Any]) -> Any:
        """Call the handler for this trigger's type (``"queue"``, ``"http"``/``"api"``, ``"cron"``,
        ``"state"``, ``"stream"``, else ``"default"``), as Motia's ``FlowContext.match`` does."""

        async def call(handler: Callable[..., Any], *args: Any) -> Any:
            out = handler(*args)
            return await out if inspect.isawaitable(out) else out

        checks = [
            (self.is_queue, ["queue"], True),
            (self.is_api, ["http", "api"], True),
            (self.is_cron, ["cron"], False),
            (self.is_state, ["state"], True),
            (self.is_stream, ["stream"], True),
        ]
        for check, names, has_input in checks:
            if check():
                handler = next((handlers[k] for k in names if k in handlers), None)
                if handler:
                    return await call(handler, self.input_value) if has_input else await call(handler)
        if handlers.get("default"):
            return await call(handlers["default"], self.input_value)
        raise RuntimeError(
            f"No handler matched for trigger type: {self.trigger.type}. "
            f"Available handlers: {', '.join(k for k in handlers if k != 'default')}"
        )


ApiMiddleware = Callable[..., Awaitable[ApiResponse[Any]]]
Enqueuer = Callable[[Any], Awaitable[None]]


class StreamConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    base_config: dict[str, Any] | None = None
    on_join: Any = None
    on_leave: Any = None


class StreamSubscription(BaseModel):
    group_id: str
    id: str | None = None


class StreamAuthInput(BaseModel):
    headers: dict[str, str]
    path: str
    query_params: dict[str, list[str]]
    addr: str


class StreamAuthResult(BaseModel):
    authorized: bool
    context: Any | None = None
