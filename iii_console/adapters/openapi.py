"""An OpenAPI 3.1 document for the project's HTTP steps, built from their schemas.

Litestar's own OpenAPI cannot see our bodies (we read them raw, see
``server.py``), so the document is built from each trigger's schema (a pydantic model or a JSON-schema dict).
It also lists the error answers every step shares, which is what API fuzzers
(schemathesis) and clients need to know.

3.1, because its schemas are JSON Schema (2020-12) as pydantic writes them: an optional
field is ``anyOf: [..., {"type": "null"}]``, which 3.0's schema dialect does not have.
"""

from __future__ import annotations

import json
from typing import Any

from iii_console.core.steps import HttpTrigger, JsonSchema, Step

OPENAPI_VERSION = "3.1.0"
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _errors(with_body: bool) -> dict[str, Any]:
    out = {
        "404": "no such route",
        "405": "method not allowed",
        "429": "a topic this step enqueues to is full; retry later",
        "503": "storage unavailable; retry later",
    }
    if with_body:
        out.update({"400": "invalid body (fields lists each problem)", "413": "body too large", "415": "send application/json"})
    return {code: {"description": d, "content": {"application/json": {"schema": _ERROR}}} for code, d in sorted(out.items())}


def _schema(schema: Any, components: dict[str, Any]) -> dict[str, Any]:
    """A trigger's schema for the document: a pydantic model as a shared component, a
    JSON-schema dict inline (it has no name to share it by)."""
    if schema is None:
        return {}
    if isinstance(schema, JsonSchema):
        # References into the dict's own $defs become references to shared components.
        text = json.dumps({k: v for k, v in schema.schema.items() if k not in ("$schema", "$id")})
        js = json.loads(text.replace('"#/$defs/', '"#/components/schemas/'))
        components.update(js.pop("$defs", {}))
        return js
    js = schema.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(js.pop("$defs", {}))
    components[schema.__name__] = js
    return {"$ref": f"#/components/schemas/{schema.__name__}"}


def document(steps: list[Step], *, title: str = "iii-console steps") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for step in steps:
        for t in step.of(HttpTrigger):
            op: dict[str, Any] = {
                "operationId": f"{step.name}_{t.method.lower()}",
                "summary": step.description or step.name,
                "tags": step.flows or ["steps"],
                "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in t.path_params],
                "responses": {
                    "2XX": {"description": "accepted by the step", "content": {"application/json": {"schema": {}}}},
                    **_errors(t.body_schema is not None or t.method in ("POST", "PUT", "PATCH")),
                },
            }
            if t.accept:
                op["requestBody"] = {
                    "required": True,
                    "description": "stored as a blob; the handler gets its ref",
                    "content": {a: {"schema": {"type": "string", "format": "binary"}} for a in t.accept},
                }
                op["responses"]["415"]["description"] = f"send one of {', '.join(t.accept)}"
            elif t.body_schema is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _schema(t.body_schema, schemas)}},
                }
            for code, schema in sorted(t.response_schema.items()):
                op["responses"][str(code)] = {
                    "description": f"{code} from the step",
                    "content": {"application/json": {"schema": _schema(schema, schemas)}},
                }
            paths.setdefault(t.path, {})[t.method.lower()] = op
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
