"""What a project accepts, read from the step registry: its JSON routes and subscribed topics,
each with an example body built from its schema.

The runtime writes each trigger's spec with :func:`example_of` (``core/steps.py``); the
console's first-message hint and send form, and ``iii-console send``, pick from
:func:`post_routes` and :func:`topic_targets` what to suggest or where to post.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: How deep nested objects are filled in; past this an object is ``{}``.
MAX_DEPTH = 6
#: The seed project's route: preferred where a project serves it (``iii-console send TEXT`` posts there).
MESSAGES_PATH = "/messages"

_PLACEHOLDER: dict[str, Any] = {
    "string": "example",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "null": None,
}


def example_body(schema: Any, *, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that fits ``schema`` (a JSON-schema dict): its required fields with placeholders by type.

    A field's ``default``, ``const``, first ``enum`` value or first ``examples`` entry wins over a
    placeholder; local ``$ref``s (``#/$defs/…``, as pydantic writes nested models) are followed.
    Not a validator: a schema with constraints it does not read (a ``minimum`` of 5, a ``pattern``)
    gets a value the server may refuse, naming the field.
    """
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    if defs is None:
        defs = {**schema.get("definitions", {}), **schema.get("$defs", {})} if isinstance(schema, dict) else {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = defs.get(ref.rsplit("/", 1)[-1])
        return example_body(target, defs=defs, depth=depth + 1)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            # The first option that is not null (``str | None`` is anyOf string, null).
            chosen = next((o for o in options if not (isinstance(o, dict) and o.get("type") == "null")), options[0])
            return example_body(chosen, defs=defs, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        listed = schema.get("required")
        required = [r for r in listed if isinstance(r, str)] if isinstance(listed, list) else []
        return {name: example_body(props.get(name, {}), defs=defs, depth=depth + 1) for name in required}
    if kind == "array":
        items = schema.get("items")
        least = schema.get("minItems")
        if isinstance(items, dict) and isinstance(least, int) and least > 0:
            return [example_body(items, defs=defs, depth=depth + 1)]
        return []
    if kind == "string":
        return "hello" if str(schema.get("title") or "").lower() == "text" else "example"
    return _PLACEHOLDER.get(kind) if isinstance(kind, str) else None


def json_schema_of(schema: Any) -> dict[str, Any] | None:
    """The JSON schema of a trigger's body or input: a pydantic model's, or the dict as given."""
    if schema is None:
        return None
    inner = getattr(schema, "schema", None)  # core.steps.JsonSchema
    if isinstance(inner, dict):
        return inner
    to_schema = getattr(schema, "model_json_schema", None)
    if callable(to_schema):
        try:
            out = to_schema()
        except Exception:  # a model with a field pydantic cannot describe as JSON schema
            return None
        return out if isinstance(out, dict) else None
    return None


def example_of(schema: Any) -> Any:
    """:func:`example_body` of a trigger's schema; ``None`` where there is none or it cannot be described."""
    described = json_schema_of(schema)
    if described is None:
        return None
    try:
        return example_body(described)
    except (TypeError, ValueError, AttributeError):  # a schema shaped past what is read here: no example, not a failed load
        return None


def _json(example: Any) -> str:
    """An example as the one-line JSON a form or a command line shows (``{}`` when there is none)."""
    return json.dumps(example if example is not None else {}, separators=(", ", ": "))


@dataclass(frozen=True)
class Route:
    """A route that takes a JSON body, as the registry describes it."""

    method: str
    path: str
    step: str
    #: An example body fitting its schema; ``None`` when the step declares no body schema.
    example: Any = None

    @property
    def example_json(self) -> str:
        return _json(self.example)


@dataclass(frozen=True)
class Topic:
    """A topic some step subscribes to, with an example of its input."""

    topic: str
    step: str
    example: Any = None

    @property
    def example_json(self) -> str:
        return _json(self.example)


def post_routes(steps: dict[str, Any]) -> list[Route]:
    """The registry's ``POST`` routes that take a JSON body and have no path parameters.

    ``/messages`` first when the project serves it, then the rest by path. Raw-body routes
    (``accept``) and ``/orders/{id}`` routes are left out: a form or a hint cannot fill them in.
    """
    out: dict[str, Route] = {}
    for name, desc in steps.items():
        if not isinstance(desc, dict):
            continue
        for spec in desc.get("trigger_specs") or []:
            if not isinstance(spec, dict) or spec.get("type") != "http" or spec.get("method") != "POST":
                continue
            path = spec.get("path")
            if not isinstance(path, str) or "{" in path or spec.get("accept"):
                continue
            out.setdefault(path, Route("POST", path, str(name), spec.get("example")))
    return sorted(out.values(), key=lambda r: (r.path != MESSAGES_PATH, r.path))


def all_routes(steps: dict[str, Any]) -> list[str]:
    """Every route the registry lists, as ``METHOD /path``, sorted."""
    out = set()
    for desc in steps.values():
        if not isinstance(desc, dict):
            continue
        for spec in desc.get("trigger_specs") or []:
            if isinstance(spec, dict) and spec.get("type") == "http":
                out.add(f"{spec.get('method')} {spec.get('path')}")
    return sorted(out)


def topic_targets(steps: dict[str, Any]) -> list[Topic]:
    """The topics steps subscribe to (queue triggers), each once, sorted."""
    out: dict[str, Topic] = {}
    for name, desc in steps.items():
        if not isinstance(desc, dict):
            continue
        for spec in desc.get("trigger_specs") or []:
            if isinstance(spec, dict) and spec.get("type") == "queue" and isinstance(spec.get("topic"), str):
                out.setdefault(spec["topic"], Topic(spec["topic"], str(name), spec.get("example")))
    return sorted(out.values(), key=lambda t: t.topic)
