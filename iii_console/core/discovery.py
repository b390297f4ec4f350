"""Find and load ``steps/**/*_step.py``.

A broken file never stops the others: each problem becomes a :class:`StepError`
(file, line, step, field) in the result, and the runtime reports it as a
``step.error`` event while the good steps run.

One module because a step file's errors are explained in one vocabulary (file, line,
step, field, the nearest accepted key); loading, the shape checks and the explanations
use each other's helpers.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from iii_console.core import eventdata
from iii_console.core.context import call_arity
from iii_console.core.emitter import Emitter
from iii_console.core.errors import StepError
from iii_console.core.steps import CronTrigger, HttpTrigger, QueueTrigger, StateTrigger, Step

TRIGGER_MODELS = {"http": HttpTrigger, "queue": QueueTrigger, "cron": CronTrigger, "state": StateTrigger}

RESERVED_TOPIC_PREFIX = "_"


def emit_step_error(
    emitter: Emitter,
    error: StepError | str,
    *,
    step: str | None = None,
    file: str | None = None,
    trace_id: str | None = None,
    traceback: str | None = None,
) -> None:
    """The one place a ``step.error`` event is built: a step file that did not load (a
    :class:`StepError`, at start or on a reload), or a step's code that failed around its
    handler (a state condition, an HTTP answer that cannot be sent) with the file it is in."""
    if isinstance(error, StepError):
        data = eventdata.StepError(file=error.file, line=error.line, field=error.field, message=error.message)
        emitter.emit("step.error", step=error.step, error=str(error), data=data)
        return
    where = {"trace_id": trace_id} if trace_id is not None else {}
    data = eventdata.StepError(file=file)
    if traceback is not None:
        data = eventdata.StepError(traceback=traceback, file=file)  # the traceback first, as the console shows it
    emitter.emit("step.error", **where, step=step, error=error, data=data)


@dataclass
class StepSet:
    steps: list[Step] = field(default_factory=list)
    errors: list[StepError] = field(default_factory=list)
    #: Which ``motia`` package step files import (see ``core/motia/adapt.install``).
    motia: str = ""

    @property
    def motia_steps(self) -> list[Step]:
        return [s for s in self.steps if getattr(s.handler, "motia_handler", None) is not None]

    def by_name(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def subscribers(self, topic: str) -> list[Step]:
        return [s for s in self.steps if topic in s.topics]

    @property
    def topics(self) -> list[str]:
        return sorted({t for s in self.steps for t in s.topics})

    def of(self, kind: type) -> list[Step]:
        return [s for s in self.steps if s.of(kind)]

    def http_steps(self) -> list[Step]:
        return self.of(HttpTrigger)

    def cron_steps(self) -> list[Step]:
        return self.of(CronTrigger)

    def state_steps(self) -> list[Step]:
        return self.of(StateTrigger)

    def queue_steps(self) -> list[Step]:
        return self.of(QueueTrigger)


def _line_of(exc: BaseException, file: str) -> int | None:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == file:
            return frame.lineno
    return getattr(exc, "lineno", None)


def _path_of(loc: tuple[Any, ...]) -> list[str]:
    """A pydantic error location as the user wrote it: discriminated unions insert the
    tag ("http") after a list index; drop it."""
    out: list[str] = []
    for i, part in enumerate(loc):
        part = str(part)
        if i > 0 and str(loc[i - 1]).isdigit() and part in TRIGGER_MODELS:
            continue
        out.append(part)
    return out


def _accepted_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at ``loc``'s parent accepts (aliases too), for "did you mean"."""
    parent = loc[:-1]
    model: Any = Step
    if parent and str(parent[-1]) in TRIGGER_MODELS:
        model = TRIGGER_MODELS[str(parent[-1])]
    elif parent:
        return []
    keys = []
    for name, info in model.model_fields.items():
        if name not in ("handler", "file"):
            keys.append(info.alias or name)
    return keys


def _explain(exc: ValidationError) -> tuple[str, str, list[str]]:
    """(message, field, location) of the error a person should fix first.

    An unknown key comes before anything else: a misspelt ``trigers`` also makes
    ``triggers`` missing, and "unknown field 'trigers', did you mean 'triggers'?"
    is the useful half. Other problems in the same config are listed after it.
    """
    errors = exc.errors()
    rank = {"extra_forbidden": 0, "union_tag_invalid": 1, "union_tag_not_found": 1}
    ordered = sorted(errors, key=lambda e: rank.get(e["type"], 2))
    first = ordered[0]
    path = _path_of(first["loc"])
    kind = first["type"]
    close: list[str] = []
    if kind == "extra_forbidden":
        key = path[-1] if path else "?"
        import difflib  # only for a step error

        close = difflib.get_close_matches(key, _accepted_keys(first["loc"]), n=1, cutoff=0.6)
        msg = f"unknown field {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        path = [*path, "type"]
        tag = (first.get("ctx") or {}).get("tag")
        choices = "http, queue, cron or state"
        msg = f"{tag!r} is not a trigger type; use {choices}" if kind == "union_tag_invalid" else f"missing; use {choices}"
    else:
        msg = first["msg"].removeprefix("Value error, ")
    fixed_by_it = {".".join([*path[:-1], close[0]])} if kind == "extra_forbidden" and close else set()
    others = [".".join(_path_of(e["loc"])) or "(config)" for e in ordered[1:]]
    others = [o for o in dict.fromkeys(others) if o != ".".join(path) and o not in fixed_by_it]
    if others:
        msg += f" (also check: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})"
    return msg, ".".join(path), path


_NAME_IN_SOURCE = re.compile(r"""Step\(\s*name\s*=\s*["']([^"']+)["']|["']name["']\s*:\s*["']([^"']+)["']""")


def _declared_name(source: str) -> str | None:
    m = _NAME_IN_SOURCE.search(source)
    return (m.group(1) or m.group(2)) if m else None


class _Source:
    """The step file's text and syntax tree, to point errors at a line.

    A dict config raises nothing at import, so its mistakes have no traceback;
    the line comes from walking the ``config = {...}`` literal to the offending key.
    """

    def __init__(self, path: Path):
        try:
            self.text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            self.text = ""
        try:
            self.tree: ast.Module | None = ast.parse(self.text)
        except (SyntaxError, ValueError):
            self.tree = None

    def _assigned(self, name: str) -> ast.stmt | None:
        found = None
        for node in self.tree.body if self.tree else []:
            if (
                (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets))
                or (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name)
                or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name)
            ):
                found = node
        return found

    def line_of_def(self, name: str) -> int | None:
        node = self._assigned(name)
        return node.lineno if node else None

    def line_in_config(self, path: list[str]) -> int | None:
        """The line of ``config``'s part at ``path`` (or of the deepest part that exists)."""
        top = self._assigned("config")
        if top is None:
            return None
        node: ast.AST | None = getattr(top, "value", None)
        line = top.lineno
        for part in path:
            if node is None:
                break
            line = getattr(node, "lineno", line)
            nxt: ast.AST | None = None
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == part:
                        nxt = v
                        line = k.lineno
            elif isinstance(node, (ast.List, ast.Tuple)) and part.isdigit() and int(part) < len(node.elts):
                nxt = node.elts[int(part)]
            elif isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == part:
                        nxt = kw.value
                        line = kw.value.lineno
            if nxt is None:
                break
            node = nxt
            line = getattr(node, "lineno", line)
        return line


#: Keys of Motia's older step shape, where the step's ``type`` was its one trigger.
_LEGACY_TYPES = {"event", "api", "cron", "noop"}


def _legacy_shape(raw: dict[str, Any]) -> tuple[str, str] | None:
    """(field, message) if ``raw`` is Motia's older shape, with the same step written the current way.

    Not translated silently: in that shape handlers call ``emit({"topic", "data"})``,
    which here is ``ctx.enqueue(topic, data)``, so the handler needs a look too.
    """
    kind = raw.get("type")
    if "triggers" in raw:
        return _between_shape(raw)
    if not (kind in _LEGACY_TYPES or "subscribes" in raw or "emits" in raw):
        return None
    topics = [t if isinstance(t, str) else (t.get("topic") if isinstance(t, dict) else str(t)) for t in raw.get("emits") or []]
    if kind == "event" or (kind is None and "subscribes" in raw):
        extra = ', "input": ...' if "input" in raw else ""
        trig = [f'{{"type": "queue", "topic": "{t}"{extra}}}' for t in raw.get("subscribes") or []]
        was = '"type": "event" with "subscribes"'
    elif kind == "api":
        extra = ', "bodySchema": ...' if "bodySchema" in raw else ""
        trig = [f'{{"type": "http", "method": "{raw.get("method", "POST")}", "path": "{raw.get("path", "/...")}"{extra}}}']
        was = '"type": "api"'
    elif kind == "cron":
        trig = [f'{{"type": "cron", "cron": "{raw.get("cron", "...")}"}}']
        was = '"type": "cron" with "cron"'
    else:
        trig = []
        was = f'"type": {kind!r}' if kind else '"emits"'
    if kind == "noop":
        return "type", (
            'noop steps are drawn, not run: write "triggers": [], "virtualSubscribes": [...] and '
            '"virtualEnqueues": [...] (the topics it stands between) instead of "type": "noop"'
        )
    rewrite = f'"triggers": [{", ".join(trig) or "..."}]' + (
        f', "enqueues": {list(topics)!r}'.replace("'", '"') if topics else ""
    )
    return ("type" if kind else "emits"), (
        f"this is Motia's older step shape ({was}); write {rewrite} instead, "
        f"and call ctx.enqueue(topic, data) where the handler called emit(...)"
    )


def _between_shape(raw: dict[str, Any]) -> tuple[str, str] | None:
    """(field, message) for the shape between Motia's older one and 1.0: ``triggers`` holding
    ``{"type": "event", "topic"}`` (now ``queue``) or ``{"type": "api"}`` (now ``http``), and ``emits``
    (now ``enqueues``)."""
    raw_triggers = raw.get("triggers")
    triggers = raw_triggers if isinstance(raw_triggers, list) else []
    for i, t in enumerate(triggers):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "event":
            topic = t.get("topic", "...")
            return f"triggers.{i}.type", (
                f"'event' triggers are Motia's older name for queue triggers: write "
                f'{{"type": "queue", "topic": "{topic}"}}' + (', and "enqueues" for "emits"' if "emits" in raw else "")
            )
        if kind == "api":
            return f"triggers.{i}.type", (
                f"'api' triggers are Motia's older name for http triggers: write "
                f'{{"type": "http", "method": "{t.get("method", "POST")}", "path": "{t.get("path", "/...")}"}}'
            )
    if "emits" in raw:
        topics = [
            e if isinstance(e, str) else (e.get("topic") if isinstance(e, dict) else str(e)) for e in raw.get("emits") or []
        ]
        return "emits", (
            f"'emits' is Motia's older name for 'enqueues': write \"enqueues\": {json.dumps(topics)}, and call "
            'ctx.enqueue(topic, data) (or motia\'s enqueue({"topic", "data"})) where the handler called emit(...)'
        )
    return None


def _motia(module: Any, raw: Any, src: _Source, file: str, declared: str | None) -> tuple[Any, Any]:
    """A Motia step file's config and handler, translated (see :mod:`iii_console.core.motia.adapt`)."""
    from iii_console.core.motia import adapt

    name = getattr(raw, "name", None) or (raw.get("name") if isinstance(raw, dict) else None) or declared
    handler = getattr(module, "handler", None)
    if isinstance(raw, dict):
        legacy = _legacy_shape(raw)
        if legacy:
            raise StepError(legacy[1], file=file, step=name, field=legacy[0], line=src.line_in_config(legacy[0].split(".")))
    try:
        config, plans, defined = adapt.translate(raw)
        handler = handler if handler is not None else defined
        if callable(handler):
            adapt.check_handler(handler)
            handler = adapt.wrap(handler, plans)
    except adapt.Refused as exc:
        line = src.line_in_config(exc.path) if exc.path is not None else src.line_of_def("handler")
        raise StepError(str(exc), file=file, step=name, field=exc.field, line=line) from None
    return config, handler


#: The package step files are imported under (``iii_steps.orders.place_step``), so a relative import in one
#: (``from .helpers import x``) finds the modules beside it.
STEPS_PACKAGE = "iii_steps"


def _packages(root: Path, rel_dir: Path) -> None:
    """Make ``iii_steps`` (the steps folder) and a package for each folder down to ``rel_dir`` importable."""
    name, folder = STEPS_PACKAGE, root
    for part in ("", *rel_dir.parts):
        if part:
            name, folder = f"{name}.{part}", folder / part
        known = sys.modules.get(name)
        if known is not None and list(getattr(known, "__path__", None) or ()) == [str(folder)]:
            continue
        module: Any = None
        init = folder / "__init__.py"
        if part and init.is_file():
            spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except Exception:  # the step that imports it reports it, at its own line
                    module = None
        if module is None:  # a folder without __init__.py (or one that fails): a namespace
            module = types.ModuleType(name)
            module.__path__ = [str(folder)]
            sys.modules[name] = module


def load_step_file(path: Path, root: Path) -> Step:
    file = str(path)
    rel = path.relative_to(root).with_suffix("")
    mod_name = f"{STEPS_PACKAGE}." + ".".join(rel.parts)
    src = _Source(path)
    declared = _declared_name(src.text)
    try:
        _packages(root, rel.parent)
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        if exc.filename and exc.filename != file:  # in a module the step imports
            raise StepError(
                f"import failed: syntax error in {exc.filename}:{exc.lineno}: {exc.msg}",
                file=file,
                step=declared,
                line=_line_of(exc, file),
            ) from None
        raise StepError(f"syntax error: {exc.msg}", file=file, step=declared, line=exc.lineno) from None
    except ValidationError as exc:
        # A typed helper (Step(...), http(...)) rejected its arguments at import time,
        # before the Step object (and so its name) existed: read the name from the source.
        msg, fld, where = _explain(exc)
        line = _line_of(exc, file)
        if exc.title == "Step":  # Step(...) spans lines; point at the keyword, not the call
            line = src.line_in_config(where) or line
        raise StepError(msg, file=file, step=declared, field=fld, line=line) from None
    except Exception as exc:
        if type(exc).__name__ == "Unsupported" and getattr(exc, "name", None) == "motia":
            raise StepError(str(exc), file=file, step=declared, line=_line_of(exc, file)) from None
        raise StepError(
            f"import failed: {type(exc).__name__}: {exc}", file=file, step=declared, line=_line_of(exc, file)
        ) from None

    raw = getattr(module, "config", None)
    if raw is None:
        raise StepError("no `config` defined", file=file, step=declared, field="config")
    motia_handler = None
    if _uses_motia(module, src, file, declared):
        raw, motia_handler = _motia(module, raw, src, file, declared)
    name = raw.name if isinstance(raw, Step) else (raw.get("name") if isinstance(raw, dict) else None)
    name = name if isinstance(name, str) else None
    if isinstance(raw, Step):
        step = raw
    elif isinstance(raw, dict):
        legacy = _legacy_shape(raw)
        if legacy:
            raise StepError(legacy[1], file=file, step=name, field=legacy[0], line=src.line_in_config(legacy[0].split(".")))
        try:
            step = Step.model_validate(raw)
        except ValidationError as exc:
            msg, fld, where = _explain(exc)
            raise StepError(msg, file=file, step=name, field=fld, line=src.line_in_config(where)) from None
    else:
        raise StepError(
            f"`config` must be a Step or a dict, not {type(raw).__name__}",
            file=file,
            field="config",
            line=src.line_of_def("config"),
        )

    handler = motia_handler if motia_handler is not None else getattr(module, "handler", None)
    if handler is None and not step.triggers:  # drawn in the flow graph, never run
        return step.model_copy(update={"file": file})
    if handler is None:
        raise StepError("no `handler` defined", file=file, step=step.name, field="handler")
    if not callable(handler):
        raise StepError(
            f"`handler` must be a function, not {type(handler).__name__}",
            file=file,
            step=step.name,
            field="handler",
            line=src.line_of_def("handler"),
        )
    if call_arity(handler) == 0:
        raise StepError(
            "handler must take (input, ctx) or (ctx)", file=file, step=step.name, field="handler", line=src.line_of_def("handler")
        )
    for i, t in enumerate(step.triggers):
        if isinstance(t, QueueTrigger) and t.topic.startswith(RESERVED_TOPIC_PREFIX):
            raise StepError(
                f"topic {t.topic!r}: names starting with '_' are reserved",
                file=file,
                step=step.name,
                field=f"triggers.{i}.topic",
                line=src.line_in_config(["triggers", str(i)]),
            )
    return step.model_copy(update={"handler": handler, "file": file})


def _imports_motia(tree: ast.Module | None) -> bool:
    for node in ast.walk(tree) if tree else []:
        if isinstance(node, ast.Import) and any(a.name == "motia" or a.name.startswith("motia.") for a in node.names):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and (node.module == "motia" or node.module.startswith("motia."))
        ):
            return True
    return False


def _uses_motia(module: Any, src: _Source, file: str, declared: str | None) -> bool:
    """Whether the step file was written against ``motia`` (and gets iii-console's)."""
    from iii_console.core.motia.adapt import PACKAGE, install, is_motia_step

    imports = _imports_motia(src.tree)
    if imports and getattr(sys.modules.get("motia"), "__name__", PACKAGE) != PACKAGE:
        raise StepError(
            f"this step imports {install()}, whose objects need Motia's engine; run iii-console from an "
            f"environment without it, where `import motia` gets iii-console's compatibility module",
            file=file,
            step=declared,
        )
    return imports or is_motia_step(module)


def discover(
    steps_dir: str | Path, project_dir: str | Path | None = None, *, on_file: Callable[[Path | None], None] | None = None
) -> StepSet:
    """Every step file under ``steps_dir``. Steps import helpers beside them (``steps_dir`` goes first on
    ``sys.path``) and packages of the project (``project_dir``, last: an installed package or the standard
    library keeps its name), the same whether the project runs as ``iii-console`` or ``python -m``.

    ``on_file`` is called with each file's path before it is imported, and with ``None`` after the last.
    """
    root = Path(steps_dir).resolve()
    if project_dir is not None:
        top = str(Path(project_dir).resolve())
        if top not in sys.path:
            sys.path.append(top)
    out = StepSet()
    from iii_console.core.motia.adapt import install

    out.motia = install()
    if not root.is_dir():
        out.errors.append(StepError("steps directory not found", file=str(root)))
        return out
    # Steps may import helpers that sit next to them.
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    names: dict[str, str] = {}
    for path in sorted(root.rglob("*_step.py")):
        if any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(root).parts):
            continue
        if on_file is not None:
            on_file(path)
        try:
            step = load_step_file(path, root)
        except StepError as err:
            out.errors.append(err)
            continue
        if step.name in names:
            out.errors.append(
                StepError(
                    f"duplicate step name; also defined in {names[step.name]}",
                    file=str(path),
                    step=step.name,
                    field="name",
                    line=_Source(path).line_in_config(["name"]),
                )
            )
            continue
        names[step.name] = str(path)
        out.steps.append(step)
    if on_file is not None:
        on_file(None)
    routes: dict[tuple[str, str], Step] = {}
    for step in list(out.steps):
        mine = [(i, t) for i, t in enumerate(step.triggers) if isinstance(t, HttpTrigger)]
        clash = next(((i, t) for i, t in mine if t.route_key in routes), None)
        if clash is not None:
            i, t = clash
            other = routes[t.route_key]
            out.errors.append(
                StepError(
                    f"route {t.describe()} is already served by step {other.name!r} ({other.file}, loaded first: "
                    "files load in path order); this step is not loaded until one of them takes another route",
                    file=step.file,
                    step=step.name,
                    field=f"triggers.{i}",
                    line=_Source(Path(step.file)).line_in_config(["triggers", str(i)]),
                )
            )
            out.steps.remove(step)
            continue
        routes.update({t.route_key: step for _i, t in mine})
    return out
