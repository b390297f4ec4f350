"""Load a Motia step file as an iii-console step.

A step file that imports ``motia`` is run with Motia's conventions: its ``config`` (Motia's
trigger objects or dicts) becomes an ordinary :class:`~iii_console.core.steps.Step`, and its
handler is wrapped so that it is called as Motia's runtime calls it:

- one parameter: the input; two: the input and a :class:`FlowContext`;
- HTTP input is an :class:`ApiRequest`; an :class:`ApiResponse` or a ``{"status", "body",
  "headers"}`` dict is the answer;
- a cron handler's input is ``None``; a state handler's a :class:`StateTriggerInput`; a
  stream handler's a :class:`StreamTriggerInput`;
- a trigger's ``condition(input, ctx)`` is checked before the handler: false skips the run
  (an HTTP request is answered ``422``, as Motia's engine does);
- ``async def`` handlers, and sync ones that return a coroutine (``return ctx.match(...)``),
  run to completion on a loop of their own, in the worker thread;
- the module-level ``logger``, ``enqueue``, ``stateManager`` and ``Stream`` act on the run.

What cannot work without Motia's engine is refused here, at load, with the file, the line
and the equivalent (:class:`Refused`).

One module because each Motia convention (handler arity, request and response shapes,
conditions, triggers) is adapted at one seam, the wrapped handler.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from iii_console.core.context import call_arity
from iii_console.core.motia import run as _run
from iii_console.core.motia.helpers import StepDefinition
from iii_console.core.motia.types import (
    ApiRequest,
    FlowContext,
    StateTriggerInput,
    StepConfig,
    StreamTriggerInput,
    TriggerInfo,
    _Trigger,
)

PACKAGE = "iii_console.core.motia"
SUBMODULES = ("types", "triggers", "state", "streams", "enqueue", "logger", "guards", "step", "multi_trigger", "types_stream")


class Refused(ValueError):
    """A Motia feature with no equivalent here; ``path`` locates it in ``config`` (or ``None``: the handler)."""

    def __init__(self, message: str, field: str, path: list[str] | None):
        super().__init__(message)
        self.field, self.path = field, path


def install() -> str:
    """Make ``import motia`` work in step files; returns which ``motia`` step files get.

    The real package wins when it is installed (its objects then need Motia's engine).
    """
    mod = sys.modules.get("motia")
    if mod is None:
        spec = importlib.util.find_spec("motia")
        if spec is not None:
            return f"the installed motia package ({spec.origin})"
        pkg = importlib.import_module(PACKAGE)
        sys.modules["motia"] = pkg
        for sub in SUBMODULES:
            sys.modules[f"motia.{sub}"] = pkg
        _run.inherit_in_threads()
        mod = pkg
    if getattr(mod, "__name__", "") == PACKAGE:
        return "iii-console's Motia compatibility module (iii_console.core.motia)"
    return f"the installed motia package ({getattr(mod, '__file__', '?')})"


def is_motia_step(module: ModuleType) -> bool:
    """Whether a loaded step module was written against ``motia`` (it imported it or its names)."""
    for value in vars(module).values():
        if isinstance(value, ModuleType):
            if value.__name__ == PACKAGE or value.__name__.startswith(PACKAGE + "."):
                return True
        elif (getattr(value, "__module__", "") or "").startswith(PACKAGE) or (
            getattr(type(value), "__module__", "") or ""
        ).startswith(PACKAGE):
            return True
    return False


# ---- config ---------------------------------------------------------------------------

_ALIASES = {
    "bodySchema": "body_schema",
    "responseSchema": "response_schema",
    "queryParams": "query_params",
    "streamName": "stream_name",
    "groupId": "group_id",
    "itemId": "item_id",
}
_COND_TYPES = ("http", "queue", "cron")


@dataclass
class Plan:
    """How one trigger of the step reaches the handler."""

    kind: str  # http, queue, cron, state, stream
    index: int
    condition: Callable[..., Any] | None = None
    method: str | None = None
    path: str | None = None  # as the step wrote it (":id")
    route: str | None = None  # normalised like the server's ("{id}")
    topic: str | None = None
    expression: str | None = None
    stream: str | None = None
    body_model: bool = False
    written: str | None = None  # a cron expression as the step wrote it


_QUARTZ_DAYS = {str(n): name for n, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"), 1)}


def quartz_cron(expr: str) -> str:
    """Motia's cron (the Rust ``cron`` crate: 6 or 7 fields, seconds first) in iii-console's
    syntax. The crate numbers days of the week as Quartz does, 1 (Sunday) to 7 (Saturday),
    where classic cron has 0 (Sunday) to 6: the numbers become day names, and Quartz's ``?``
    ("no value", day of month or week) becomes ``*``."""
    fields = expr.split()
    if len(fields) not in (6, 7):
        return expr
    fields = ["*" if f == "?" else f for f in fields]
    parts = []
    for part in fields[5].split(","):
        base, slash, step = part.partition("/")
        parts.append("-".join(_QUARTZ_DAYS.get(x, x) for x in base.split("-")) + slash + step)
    fields[5] = ",".join(parts)
    return " ".join(fields)


def _as_dict(trigger: Any) -> Any:
    if isinstance(trigger, _Trigger):
        return {name: getattr(trigger, name) for name in type(trigger).model_fields}
    if isinstance(trigger, dict):
        return {_ALIASES.get(k, k): v for k, v in trigger.items()}
    return trigger


def _route(path: str) -> str:
    path = re.sub(r"(?<=/):([A-Za-z_][A-Za-z0-9_]*)(?=/|$)", r"{\1}", path)
    return path.rstrip("/") if len(path) > 1 else path


def _topic(entry: Any) -> Any:
    if isinstance(entry, BaseModel) and hasattr(entry, "topic"):
        return entry.topic
    if isinstance(entry, dict) and "topic" in entry:
        return entry["topic"]
    return entry


def translate(raw: Any) -> tuple[dict[str, Any], list[Plan], Callable[..., Any] | None]:
    """Motia's config (a dict, a ``StepConfig`` or a ``StepDefinition``) as an iii-console step dict,
    the plan of each trigger, and the handler a ``StepDefinition`` carries."""
    handler = None
    if isinstance(raw, StepDefinition):
        raw, handler = raw.config, raw.handler
    if isinstance(raw, StepConfig):
        data = {
            "name": raw.name,
            "triggers": list(raw.triggers),
            "enqueues": list(raw.enqueues),
            "flows": raw.flows or [],
            "description": raw.description or "",
            "virtual_enqueues": raw.virtual_enqueues,
            "virtual_subscribes": raw.virtual_subscribes,
        }
    else:
        data = dict(raw)
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = {
            "virtualEnqueues": "virtual_enqueues",
            "virtualSubscribes": "virtual_subscribes",
            "includeFiles": "include_files",
        }.get(key, key)
        if key == "include_files" or (key in ("virtual_enqueues", "virtual_subscribes", "flows") and value is None):
            continue  # bundling hints for Motia's deploys; nothing to bundle here
        if key in ("enqueues", "virtual_enqueues", "virtual_subscribes") and isinstance(value, list):
            value = [_topic(v) for v in value]
        if key == "description" and value is None:
            value = ""
        out[key] = value
    plans: list[Plan] = []
    triggers = out.get("triggers")
    if isinstance(triggers, list):
        out["triggers"] = []
        for i, trig in enumerate(triggers):
            ours, plan = _trigger(_as_dict(trig), i)
            out["triggers"].append(ours)
            if plan is not None:
                plans.append(plan)
    return out, plans, handler


def _trigger(t: Any, i: int) -> tuple[Any, Plan | None]:
    if not isinstance(t, dict):
        return t, None
    t = dict(t)
    kind = t.get("type")
    where = ["triggers", str(i)]
    cond = t.pop("condition", None)
    if kind in ("http", "api"):
        if t.pop("middleware", None):
            raise Refused(
                "middleware is not supported: do its work at the start of the handler (or in a function it "
                "calls); for authentication set server.auth_token in iii-config.yaml",
                f"triggers.{i}.middleware",
                [*where, "middleware"],
            )
        t.pop("query_params", None)  # documentation only
        body = t.pop("body_schema", None)
        resp = t.pop("response_schema", None)
        ours = {**t, "type": "http"}
        if body is not None:
            ours["bodySchema"] = body
        if resp:
            ours["responseSchema"] = resp
        path = t.get("path") if isinstance(t.get("path"), str) else ""
        method = t.get("method").upper() if isinstance(t.get("method"), str) else None
        return ours, Plan(
            "http",
            i,
            cond,
            method=method,
            path=path,
            route=_route(path),
            body_model=isinstance(body, type) and issubclass(body, BaseModel),
        )
    if kind == "queue":
        if t.pop("config", None) is not None:
            raise Refused(
                "a queue config on the trigger is not supported: set queues.TOPIC.max_retries, retry_delay, "
                "backoff and concurrency in iii-config.yaml",
                f"triggers.{i}.config",
                [*where, "config"],
            )
        if t.get("input") is None:
            t.pop("input", None)
        return t, Plan("queue", i, cond, topic=t.get("topic"))
    if kind == "cron":
        ours = {k: v for k, v in t.items() if k != "expression"}
        written = t.get("expression", t.get("cron"))
        ours["cron"] = quartz_cron(written) if isinstance(written, str) else written
        ours.pop("expression", None)
        return ours, Plan("cron", i, cond, expression=ours["cron"], written=written)
    if kind == "state":
        plan = Plan("state", i, cond)
        return {**t, "condition": _state_condition(plan)}, plan
    if kind == "stream":
        name = t.get("stream_name")
        if not isinstance(name, str) or not name:
            raise Refused('a stream trigger needs the stream\'s name: stream("name")', f"triggers.{i}.stream_name", where)
        plan = Plan("stream", i, cond, stream=name)
        extra = {k: v for k, v in t.items() if k not in ("type", "stream_name", "group_id", "item_id")}
        return {
            **extra,
            "type": "state",
            "group": _run.stream_group(name),
            "key": _run.stream_key_glob(t.get("group_id"), t.get("item_id")),
            "condition": _state_condition(plan),
        }, plan
    if cond is not None:
        t["condition"] = cond
    return t, None


def _condition_ctx(info: TriggerInfo, value: Any, trace_id: str = "") -> FlowContext[Any]:
    return FlowContext(
        trace_id=trace_id,
        trigger=info,
        input_value=value,
        logger=_run.Logger(),
        state=_run.StateManager(),
        streams=_run.Streams(),
        enqueue_fn=_run.enqueue,
    )


def _state_condition(plan: Plan) -> Callable[[Any], bool]:
    """The dispatcher's ``condition(change)`` for a Motia state or stream trigger: Motia's input,
    Motia's condition. A state trigger never fires for a stream's items (they are not state there)."""

    def condition(change: Any) -> bool:
        value = _input_for_change(plan, change)
        if value is None:
            return False
        if plan.condition is None:
            return True
        ctx = _condition_ctx(TriggerInfo(type=plan.kind, index=plan.index), value, getattr(change, "trace_id", ""))
        return bool(_resolve(plan.condition(value, ctx)))

    return condition


def _input_for_change(plan: Plan, change: Any) -> Any:
    stream = _run.stream_change(change.group, change.key, change.old, change.new)
    if plan.kind == "stream":
        return StreamTriggerInput.model_validate(stream) if stream else None
    if change.group.startswith(_run.STREAM_GROUP_PREFIX):
        return None
    return StateTriggerInput(group_id=change.group, item_id=change.key, old_value=change.old, new_value=change.new)


# ---- handler --------------------------------------------------------------------------


def check_handler(handler: Callable[..., Any]) -> None:
    """Refuse what Motia's handlers may take that cannot work here (raises :class:`Refused`)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        params = []
    if params and "MotiaHttpArgs" in str(params[0].annotation):
        raise Refused(
            "streamed HTTP (MotiaHttpArgs: request.request_body, response.writer, SSE) needs Motia's channels and is "
            "not supported: take an ApiRequest (its JSON body is read whole) and return ApiResponse(status, body, headers)",
            "handler",
            None,
        )
    if call_arity(handler) == 0:
        raise Refused("a Motia handler takes (input) or (input, ctx)", "handler", None)


def _resolve(value: Any) -> Any:
    """Run an awaitable (an ``async def`` handler's result, ``ctx.match(...)``) to completion on a loop of its own."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        out = await value
        while inspect.isawaitable(out):
            out = await out
        return out

    return asyncio.run(wait())


def _awaitable_enqueue(event: dict[str, Any]) -> _Done:
    """``enqueue`` for an ``async def`` handler: done at once, and awaitable (``await enqueue(...)``)."""
    out = _run.enqueue(event)
    return out if isinstance(out, _Done) else _Done(None)


_Done = _run.Done


def awaits_module_objects(handler: Callable[..., Any]) -> bool:
    """Whether ``handler``'s step file awaits Motia's module-level objects: ``await stateManager.set(...)``,
    ``await enqueue(...)``, ``await some_stream.get(...)`` (a ``Stream`` made or imported there), or
    ``await ctx.streams.NAME.set(...)``, as files written for Motia 1.0.1 to 1.0.3 do (their methods were
    ``async def``). Such a file's runs get awaitable results from them; a file written for 1.0.4 and
    later, which calls them plainly, gets plain values. Read from the file's source and the objects its
    module holds (what a name awaited there is, once imported)."""
    code, names = getattr(handler, "__code__", None), getattr(handler, "__globals__", None)
    if code is None or names is None:
        return False
    try:
        tree = ast.parse(Path(code.co_filename).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Await) or not isinstance(node.value, ast.Call):
            continue
        func, chain = node.value.func, []
        while isinstance(func, ast.Attribute):
            chain.append(func.attr)
            func = func.value
        if "streams" in chain[1:]:
            return True  # ctx.streams.NAME.method(...)
        if isinstance(func, ast.Name):
            obj = names.get(func.id)
            if isinstance(obj, (_run.StateManager, _run.Stream, _run.Streams)) or obj is _run.enqueue:
                return True
    return False


class _Awaitable:
    """``ctx.state`` for an ``async def`` handler: the same calls, each awaitable."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._target, name)
        return lambda *a, **kw: _Done(fn(*a, **kw))


def _which(plans: list[Plan], trigger: dict[str, Any], value: Any) -> Plan:
    kind = trigger.get("type")
    for p in plans:
        if kind == "http" and p.kind == "http" and p.method == trigger.get("method") and p.route == trigger.get("path"):
            return p
        if kind == "queue" and p.kind == "queue" and p.topic == trigger.get("topic"):
            return p
        if kind == "cron" and p.kind == "cron" and p.expression == trigger.get("expression"):
            return p
        if kind == "state" and p.kind in ("state", "stream") and _input_for_change(p, value) is not None:
            return p
    return next((p for p in plans if p.kind == kind), Plan(str(kind), 0))


def _motia_input(plan: Plan, value: Any) -> Any:
    if plan.kind == "http":
        body = value.body.model_dump(mode="json") if plan.body_model and isinstance(value.body, BaseModel) else value.body
        return ApiRequest(
            path_params=dict(value.path_params), query_params=dict(value.query), body=body, headers=dict(value.headers)
        )
    if plan.kind == "cron":
        return None
    if plan.kind in ("state", "stream"):
        return _input_for_change(plan, value)
    return value


def http_answer(out: Any) -> Any:
    """What Motia's runtime sends for a handler's result, as iii-console's ``{"status", "body", "headers"}``:
    a model (``ApiResponse``) or a dict gives its ``status`` (or ``status_code``, default 200), ``body``
    and ``headers``; anything else, no body."""
    if isinstance(out, BaseModel):
        out = out.model_dump(mode="json")
    if isinstance(out, dict):
        status = out.get("status_code", out.get("status", 200))
        return {"status": status, "body": out.get("body"), "headers": out.get("headers") or {}}
    return {"status": 200, "body": None, "headers": {}}


NOT_MET = {"error": "Request condition not met", "skipped": True}


def wrap(handler: Callable[..., Any], plans: list[Plan]) -> Callable[..., Any]:
    """The handler as iii-console calls it (``def handler(input, ctx)``), calling Motia's as Motia does."""
    two = call_arity(handler) == 2
    is_async = inspect.iscoroutinefunction(handler)
    awaited = is_async and awaits_module_objects(handler)

    def motia_handler(value: Any, ctx: Any) -> Any:
        plan = _which(plans, dict(ctx.trigger), value)
        data = _motia_input(plan, value)
        info = TriggerInfo(
            type=plan.kind,
            index=plan.index,
            path=plan.path,
            method=plan.method,
            topic=ctx.trigger.get("topic") if plan.kind == "queue" else None,
            expression=plan.written,
        )
        manager = _run.StateManager()
        flow: FlowContext[Any] = FlowContext(
            trace_id=ctx.trace_id,
            trigger=info,
            input_value=data,
            logger=_run.Logger(ctx),
            state=_Awaitable(manager) if is_async else manager,
            streams=_run.Streams(),
            enqueue_fn=_awaitable_enqueue if is_async else _run.enqueue,
        )
        token = _run.run_in(ctx, awaited=awaited)
        try:
            if plan.condition is not None and plan.kind in _COND_TYPES and not _resolve(plan.condition(data, flow)):
                if plan.kind == "http":
                    return {"status": 422, "body": NOT_MET, "headers": {}}
                ctx.logger.info("skipped: the trigger's condition is false", trigger=plan.kind)
                return None
            out = _resolve(handler(data, flow) if two else handler(data))
        finally:
            _run.leave(token)
        return http_answer(out) if plan.kind == "http" else out

    motia_handler.motia_handler = handler  # type: ignore[attr-defined]
    motia_handler.__name__ = getattr(handler, "__name__", "handler")
    return motia_handler
