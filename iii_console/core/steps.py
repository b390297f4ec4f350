"""The step model: what triggers a step, what it enqueues, and its handler.

A step's ``config`` is either built with the typed helpers (``Step(..., triggers=[http(...)])``)
or written as a Motia-shaped dict; both go through the same pydantic models, so a
mistake is reported the same way: file, step, field.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$"
TOPIC_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$"
PRIORITIES = ("high", "normal", "low")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True)


def _schema_ok(v: Any) -> Any:
    if v is None or (isinstance(v, type) and issubclass(v, BaseModel)):
        return v
    raise ValueError("must be a pydantic model class")


class HttpTrigger(_Model):
    type: Literal["http"] = "http"
    method: str = "POST"
    path: str
    body_schema: Any = Field(default=None, alias="bodySchema")
    response_schema: dict[int, Any] = Field(default_factory=dict, alias="responseSchema")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        up = v.upper()
        if up not in HTTP_METHODS:
            raise ValueError(f"must be one of {', '.join(HTTP_METHODS)}")
        return up

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        # Motia writes params as :id; normalise to {id}.
        v = re.sub(r":([A-Za-z_][A-Za-z0-9_]*)", r"{\1}", v)
        if not re.fullmatch(r"(/[A-Za-z0-9_.~{}-]*)+", v):
            raise ValueError("may contain only /, letters, digits, _ . ~ - and {param}")
        return v

    _check_body = field_validator("body_schema")(classmethod(lambda cls, v: _schema_ok(v)))

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{([A-Za-z_][A-Za-z0-9_]*)}", self.path)

    def describe(self) -> str:
        return f"{self.method} {self.path}"


class QueueTrigger(_Model):
    type: Literal["queue"] = "queue"
    topic: str = Field(pattern=TOPIC_RE)
    input_schema: Any = Field(default=None, alias="input")

    _check_input = field_validator("input_schema")(classmethod(lambda cls, v: _schema_ok(v)))

    def describe(self) -> str:
        return f"queue {self.topic}"


class CronTrigger(_Model):
    type: Literal["cron"] = "cron"
    expression: str = Field(alias="cron")

    @field_validator("expression")
    @classmethod
    def _expr(cls, v: str) -> str:
        from iii_console.core.cronexpr import parse_cron

        parse_cron(v)  # raises ValueError with the offending field
        return v

    def describe(self) -> str:
        return f"cron {self.expression}"


class StateTrigger(_Model):
    type: Literal["state"] = "state"
    group: str = Field(pattern=NAME_RE)
    key: str = "*"
    condition: Callable[[Any], bool] | None = None

    def matches(self, group: str, key: str) -> bool:
        return group == self.group and fnmatch.fnmatchcase(key, self.key)

    def describe(self) -> str:
        return f"state {self.group}/{self.key}" + (" (conditional)" if self.condition else "")


Trigger = Annotated[Union[HttpTrigger, QueueTrigger, CronTrigger, StateTrigger], Field(discriminator="type")]


class Step(_Model):
    """A step's declaration. ``handler`` and ``file`` are filled in by discovery."""

    name: str = Field(pattern=NAME_RE)
    triggers: list[Trigger] = Field(min_length=1)
    enqueues: list[str] = Field(default_factory=list)
    flows: list[str] = Field(default_factory=list)
    description: str = ""
    priority: Literal["high", "normal", "low"] = "normal"
    handler: Callable[..., Any] | None = Field(default=None, exclude=True)
    file: str = ""

    @field_validator("enqueues")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.fullmatch(TOPIC_RE, t):
                raise ValueError(f"{t!r} is not a valid topic name")
        return v

    @model_validator(mode="after")
    def _unique_http(self) -> "Step":
        seen = set()
        for t in self.triggers:
            if isinstance(t, HttpTrigger):
                if (t.method, t.path) in seen:
                    raise ValueError(f"duplicate http trigger {t.describe()}")
                seen.add((t.method, t.path))
        return self

    def of(self, kind: type) -> list[Any]:
        return [t for t in self.triggers if isinstance(t, kind)]

    def cron_like(self) -> bool:
        return bool(self.of(CronTrigger))

    @property
    def topics(self) -> list[str]:
        return [t.topic for t in self.of(QueueTrigger)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "triggers": [t.describe() for t in self.triggers],
            "trigger_specs": [_spec(t) for t in self.triggers],
            "enqueues": list(self.enqueues),
            "flows": list(self.flows),
            "description": self.description,
        }


def _spec(t: Any) -> dict[str, Any]:
    """A trigger as plain JSON (schemas by name, conditions as a flag) for registries."""
    out: dict[str, Any] = {"type": t.type}
    if isinstance(t, HttpTrigger):
        out.update(method=t.method, path=t.path, body=getattr(t.body_schema, "__name__", None))
    elif isinstance(t, QueueTrigger):
        out.update(topic=t.topic, input=getattr(t.input_schema, "__name__", None))
    elif isinstance(t, CronTrigger):
        out.update(expression=t.expression)
    elif isinstance(t, StateTrigger):
        out.update(group=t.group, key=t.key, conditional=t.condition is not None)
    return out


def http(method: str, path: str, *, body: type[BaseModel] | None = None, responses: dict[int, Any] | None = None) -> HttpTrigger:
    """An HTTP trigger: ``http("POST", "/messages", body=MessageIn)``."""
    return HttpTrigger(method=method, path=path, body_schema=body, response_schema=responses or {})


def queue(topic: str, *, input: type[BaseModel] | None = None) -> QueueTrigger:
    """A queue trigger: the step receives one copy of every message enqueued to ``topic``."""
    return QueueTrigger(topic=topic, input_schema=input)


def cron(expression: str) -> CronTrigger:
    """A cron trigger: 5 fields, or 6 with a leading seconds field."""
    return CronTrigger(expression=expression)


def state(group: str, key: str = "*", *, condition: Callable[[Any], bool] | None = None) -> StateTrigger:
    """A state trigger: fires on every change in ``group`` whose key matches the glob ``key``
    and for which ``condition(change)`` (if given) is true."""
    return StateTrigger(group=group, key=key, condition=condition)
