"""The step model: what triggers a step, what it enqueues, and its handler.

A step's ``config`` is either built with the typed helpers (``Step(..., triggers=[http(...)])``)
or written as a Motia-shaped dict; both go through the same pydantic models, so a
mistake is reported the same way: file, step, field.

One module because the trigger models and ``Step`` validate each other (a trigger's
fields depend on the step around it) and are what a step file imports by name.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from iii_console.core.examples import example_of

NAME_RE = r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$"
TOPIC_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$"
PRIORITIES = ("high", "normal", "low")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True)


class InvalidInput(ValueError):
    """Data that does not match a JSON-schema dict; ``fields`` lists each problem.

    Not retryable: the same data would fail the same way on every attempt.
    """

    retryable = False

    def __init__(self, fields: list[dict[str, str]]):
        self.fields = fields
        super().__init__("; ".join(f"{f['field']}: {f['message']}" for f in fields))


def _local_only(uri: str) -> Any:
    """Resolve a ``$ref`` to a local file; never fetch a URL (loading steps must not reach the network)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValueError(f"$ref {uri!r} refused: only local files (file://) are read, nothing is fetched")
    with open(unquote(parts.path), encoding="utf-8") as fh:
        return json.load(fh)


class JsonSchema:
    """A JSON-schema dict used as a body or input schema, as Motia's Python steps write them.

    Compiled once when the step loads, so a schema that is not valid JSON Schema is a
    step error naming the field, not a failure on the first request.
    """

    def __init__(self, schema: dict[str, Any]):
        import jsonschema_rs

        try:
            self._validator = jsonschema_rs.validator_for(schema, retriever=_local_only)
        except jsonschema_rs.ValidationError as exc:
            where = "/".join(str(p) for p in exc.instance_path)
            raise ValueError(f"not a valid JSON schema{f' at {where}' if where else ''}: {exc.message.splitlines()[0]}") from None
        self.schema = schema
        self.name: str | None = schema.get("title") if isinstance(schema.get("title"), str) else None

    def validate(self, data: Any) -> Any:
        """``data`` itself if it matches; :class:`InvalidInput` naming every problem if not."""
        problems = []
        for err in self._validator.iter_errors(data):
            path = [str(p) for p in err.instance_path]
            kind = err.kind
            if hasattr(kind, "property"):  # a missing required property is reported on its parent
                path.append(str(kind.property))
            problems.append({"field": ".".join(path) or "(body)", "message": err.message, "type": type(kind).__name__.lower()})
        if problems:
            raise InvalidInput(problems)
        return data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonSchema) and other.schema == self.schema

    def __hash__(self) -> int:  # equal schemas hash alike, as __eq__ requires
        return hash(json.dumps(self.schema, sort_keys=True, default=str))

    def __repr__(self) -> str:
        return f"JsonSchema({self.schema!r})"


def _schema_ok(v: Any) -> Any:
    if v is None or isinstance(v, JsonSchema) or (isinstance(v, type) and issubclass(v, BaseModel)):
        return v
    if isinstance(v, dict):
        return JsonSchema(v)
    raise ValueError("must be a pydantic model class or a JSON-schema dict")


def schema_name(schema: Any) -> str | None:
    """How registries and the console name a schema: the model's class name or the dict's title."""
    if isinstance(schema, JsonSchema):
        return schema.name or "JSON schema"
    return getattr(schema, "__name__", None)


def validate_input(schema: Any, data: Any) -> Any:
    """Check ``data`` against a trigger's schema: a model instance for a pydantic class
    (raising pydantic's ValidationError), the data itself for a JSON-schema dict."""
    if schema is None:
        return data
    if isinstance(schema, JsonSchema):
        return schema.validate(data)
    return schema.model_validate(data)


_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
_MEDIA = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/(\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})")
_LITERAL = re.compile(r"[A-Za-z0-9_.~-]+")


class HttpTrigger(_Model):
    type: Literal["http"] = "http"
    method: str = "POST"
    path: str
    body_schema: Any = Field(default=None, alias="bodySchema")
    response_schema: dict[int, Any] = Field(default_factory=dict, alias="responseSchema")
    #: Raw body types this trigger takes (``image/*``, ``text/csv``): the body is streamed into the
    #: blob store and the handler gets its ref as ``req.body``. Empty: a JSON body, as usual.
    accept: list[str] = Field(default_factory=list)
    #: Largest raw body accepted (413 past it); ``None``: ``server.max_body_bytes``. Only with ``accept``.
    max_body_bytes: int | None = Field(default=None, ge=1, le=1 << 40, alias="maxBodyBytes")

    @field_validator("accept")
    @classmethod
    def _accept(cls, v: list[str]) -> list[str]:
        out = []
        for t in v:
            t = t.strip().lower()
            if not _MEDIA.fullmatch(t):
                raise ValueError(f"{t!r} is not a media type: type/subtype, or type/*")
            out.append(t)
        return out

    @model_validator(mode="after")
    def _raw_body(self) -> HttpTrigger:
        if self.accept:
            if self.method not in ("POST", "PUT", "PATCH"):
                raise ValueError(f"accept (a raw request body) needs POST, PUT or PATCH, not {self.method}")
            if self.body_schema is not None:
                raise ValueError("accept (a raw body, stored as a blob) and bodySchema (a JSON body) exclude each other")
        elif self.max_body_bytes is not None:
            raise ValueError("max_body_bytes applies to raw bodies: declare their types in accept")
        return self

    def accepts(self, content_type: str) -> bool:
        """Whether a request's ``Content-Type`` is one of :attr:`accept` (``image/*`` matches ``image/png``)."""
        media = content_type.split(";", 1)[0].strip().lower()
        if not _MEDIA.fullmatch(media) or media.endswith("/*"):
            return False
        return any(media == a or (a.endswith("/*") and media.startswith(a[:-1])) for a in self.accept)

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
        if len(v) > 1:
            v = v.rstrip("/")  # the server does not tell /orders/ from /orders
        # Motia writes params as :id; normalise to {id}.
        v = re.sub(r"(?<=/):([A-Za-z_][A-Za-z0-9_]*)(?=/|$)", r"{\1}", v)
        seen: set[str] = set()
        for seg in v[1:].split("/") if len(v) > 1 else []:
            if not seg:
                raise ValueError(f"{v!r} has an empty segment ('//')")
            m = _PARAM.fullmatch(seg)
            if m:
                if m.group(1) in seen:
                    raise ValueError(f"parameter {{{m.group(1)}}} appears twice")
                seen.add(m.group(1))
            elif "{" in seg or "}" in seg or seg.startswith(":"):
                raise ValueError(f"segment {seg!r}: a parameter is a whole segment, {{name}} or :name")
            elif not _LITERAL.fullmatch(seg):
                raise ValueError(f"segment {seg!r} may contain only letters, digits and _ . ~ -")
        return v

    @field_validator("response_schema")
    @classmethod
    def _responses(cls, v: dict[int, Any]) -> dict[int, Any]:
        for code in v:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code")
        return {code: _schema_ok(schema) for code, schema in v.items()}

    _check_body = field_validator("body_schema")(classmethod(lambda cls, v: _schema_ok(v)))

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)

    @property
    def route_key(self) -> tuple[str, str]:
        """What the server routes on: /orders/{id} and /orders/{key} are the same route."""
        return self.method, _PARAM.sub("{}", self.path)

    def describe(self) -> str:
        return f"{self.method} {self.path}" + (f" ({', '.join(self.accept)})" if self.accept else "")


class BatchSpec(_Model):
    """``batch`` of a queue trigger: the handler gets a list of up to ``max_size`` messages' data."""

    max_size: int = Field(ge=1, le=1000)
    """Most messages in one batch (each holds a worker thread while it waits)."""
    max_wait_ms: int = Field(ge=1, le=600_000)
    """How long the first message of a batch waits for the rest before the batch runs as it is."""
    key: str | None = Field(default=None, pattern=r"^[^.\s]+(\.[^.\s]+)*$", max_length=200)
    """Dotted path into the data: only messages with the same value there share a batch."""


class QueueTrigger(_Model):
    type: Literal["queue"] = "queue"
    topic: str = Field(pattern=TOPIC_RE)
    input_schema: Any = Field(default=None, alias="input")
    batch: BatchSpec | None = None

    _check_input = field_validator("input_schema")(classmethod(lambda cls, v: _schema_ok(v)))

    def describe(self) -> str:
        if self.batch is not None:
            return f"queue {self.topic} (batches of up to {self.batch.max_size})"
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


#: State groups that hold Motia streams (``core/motia/run.py``): stream ``todo`` is ``_stream.todo``.
STREAM_GROUP_PREFIX = "_stream."
#: What the watched-groups set holds for a state trigger without a group (it watches every group).
ANY_GROUP = "*"


class StateTrigger(_Model):
    type: Literal["state"] = "state"
    condition: Callable[[Any], bool] | None = None  # before ``group``: its check reads it
    #: ``None``: every group (Motia's state triggers have no group; their condition filters).
    group: str | None = Field(default=None, pattern=NAME_RE, validate_default=True)
    key: str = "*"

    @field_validator("condition")
    @classmethod
    def _plain_condition(cls, v: Callable[[Any], bool] | None) -> Callable[[Any], bool] | None:
        if v is not None and inspect.iscoroutinefunction(v):
            raise ValueError(
                "condition must be a plain `def` returning True or False: it runs for every change before the step is "
                "enqueued, and an `async def` one would never be awaited"
            )
        return v

    @field_validator("group")
    @classmethod
    def _group_or_condition(cls, v: str | None, info: Any) -> str | None:
        if v is None and info.data.get("condition") is None:
            raise ValueError("a state trigger needs a group, or a condition to pick its changes from every group")
        return v

    @property
    def watched(self) -> str:
        """The group's name in the watched-groups set (:data:`ANY_GROUP` for every group)."""
        return self.group if self.group is not None else ANY_GROUP

    def matches(self, group: str, key: str) -> bool:
        return (self.group is None or group == self.group) and fnmatch.fnmatchcase(key, self.key)

    def describe(self) -> str:
        cond = " (conditional)" if self.condition else ""
        if self.group is not None and self.group.startswith(STREAM_GROUP_PREFIX):
            return f"stream {self.group[len(STREAM_GROUP_PREFIX) :]} {self.key}{cond}"
        return f"state {self.group if self.group is not None else '*'}/{self.key}{cond}"


Trigger = Annotated[HttpTrigger | QueueTrigger | CronTrigger | StateTrigger, Field(discriminator="type")]


class Step(_Model):
    """A step's declaration. ``handler`` and ``file`` are filled in by discovery."""

    name: str = Field(pattern=NAME_RE)
    #: Drawn in the Steps view's flow graph only (Motia's ``virtualEnqueues``/``virtualSubscribes``):
    #: links the code makes some other way, e.g. an HTTP call or a person. Before ``triggers``: its check reads them.
    virtual_enqueues: list[str] = Field(default_factory=list, alias="virtualEnqueues")
    virtual_subscribes: list[str] = Field(default_factory=list, alias="virtualSubscribes")
    #: Empty only for a step drawn in the flow graph and never run (virtual links only; Motia's noop steps).
    triggers: list[Trigger]
    enqueues: list[str] = Field(default_factory=list)
    flows: list[str] = Field(default_factory=list)
    description: str = ""
    handler: Callable[..., Any] | None = Field(default=None, exclude=True)
    file: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if "--" in v:
            raise ValueError("may not contain '--': it separates topic, step and priority in queue names")
        return v

    @field_validator("enqueues")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.fullmatch(TOPIC_RE, t):
                raise ValueError(f"{t!r} is not a valid topic name")
        return v

    @field_validator("triggers")
    @classmethod
    def _some_trigger(cls, v: list[Any], info: Any) -> list[Any]:
        if not v and not (info.data.get("virtual_enqueues") or info.data.get("virtual_subscribes")):
            raise ValueError(
                "a step needs at least 1 trigger (a step only drawn in the flow graph, like Motia's noop "
                "steps, has virtualSubscribes/virtualEnqueues instead)"
            )
        return v

    @model_validator(mode="after")
    def _unique_http(self) -> Step:
        seen = set()
        for t in self.triggers:
            if isinstance(t, HttpTrigger):
                if t.route_key in seen:
                    raise ValueError(f"duplicate http trigger {t.describe()}")
                seen.add(t.route_key)
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
            "virtual_enqueues": list(self.virtual_enqueues),
            "virtual_subscribes": list(self.virtual_subscribes),
            "flows": list(self.flows),
            "description": self.description,
        }


def _spec(t: Any) -> dict[str, Any]:
    """A trigger as plain JSON (schemas by name, conditions as a flag) for registries."""
    out: dict[str, Any] = {"type": t.type}
    if isinstance(t, HttpTrigger):
        out.update(method=t.method, path=t.path, body=schema_name(t.body_schema))
        if t.body_schema is not None:
            out.update(example=example_of(t.body_schema))
        if t.accept:
            out.update(accept=list(t.accept), max_body_bytes=t.max_body_bytes)
    elif isinstance(t, QueueTrigger):
        out.update(topic=t.topic, input=schema_name(t.input_schema))
        if t.input_schema is not None:
            out.update(example=example_of(t.input_schema))
        if t.batch is not None:
            out.update(batch=t.batch.model_dump(exclude_none=True))
    elif isinstance(t, CronTrigger):
        out.update(expression=t.expression)
    elif isinstance(t, StateTrigger):
        out.update(group=t.group, key=t.key, conditional=t.condition is not None)
    return out


def http(
    method: str,
    path: str,
    *,
    body: type[BaseModel] | dict[str, Any] | None = None,
    responses: dict[int, Any] | None = None,
    accept: list[str] | None = None,
    max_body_bytes: int | None = None,
) -> HttpTrigger:
    """An HTTP trigger: ``http("POST", "/messages", body=MessageIn)``; ``body`` may also be a
    JSON-schema dict (the handler then gets the parsed JSON, checked against it).

    ``accept=["image/*", "text/csv"]`` takes a raw body of those types instead: it is streamed
    into the blob store (at most ``max_body_bytes``) and ``req.body`` is its ref."""
    return HttpTrigger(
        method=method,
        path=path,
        body_schema=body,
        response_schema=responses or {},
        accept=accept or [],
        max_body_bytes=max_body_bytes,
    )


def queue(
    topic: str, *, input: type[BaseModel] | dict[str, Any] | None = None, batch: BatchSpec | dict[str, Any] | None = None
) -> QueueTrigger:
    """A queue trigger: the step receives one copy of every message enqueued to ``topic``.

    With ``batch={"max_size": N, "max_wait_ms": T, "key": "path"}`` the handler gets a list
    of up to N messages' data (retried and dead-lettered per message)."""
    return QueueTrigger(topic=topic, input_schema=input, batch=batch)


def cron(expression: str) -> CronTrigger:
    """A cron trigger: 5 fields, or 6 with a leading seconds field."""
    return CronTrigger(expression=expression)


def state(group: str | None, key: str = "*", *, condition: Callable[[Any], bool] | None = None) -> StateTrigger:
    """A state trigger: fires on every change in ``group`` (``None``: any group) whose key matches
    the glob ``key`` and for which ``condition(change)`` (if given) is true."""
    return StateTrigger(group=group, key=key, condition=condition)
