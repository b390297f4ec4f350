"""Find and load ``steps/**/*_step.py``.

A broken file never stops the others: each problem becomes a :class:`StepError`
(file, line, step, field) in the result, and the runtime reports it as a
``step.error`` event while the good steps run.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from iii_console.core.context import call_arity
from iii_console.core.errors import StepError
from iii_console.core.steps import CronTrigger, HttpTrigger, QueueTrigger, StateTrigger, Step  # noqa: F401

RESERVED_TOPIC_PREFIX = "_"


@dataclass
class StepSet:
    steps: list[Step] = field(default_factory=list)
    errors: list[StepError] = field(default_factory=list)

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


def _field_of(err: dict[str, Any]) -> str:
    loc = [str(x) for x in err["loc"]]
    # Discriminated unions insert the tag ("http") into the path; drop it.
    out = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1].isdigit() and part in ("http", "queue", "cron", "state"):
            continue
        out.append(part)
    return ".".join(out)


_NAME_IN_SOURCE = re.compile(r"""Step\(\s*name\s*=\s*["']([^"']+)["']|["']name["']\s*:\s*["']([^"']+)["']""")


def _declared_name(path: Path) -> str | None:
    try:
        m = _NAME_IN_SOURCE.search(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return (m.group(1) or m.group(2)) if m else None


def load_step_file(path: Path, root: Path) -> Step:
    file = str(path)
    rel = path.relative_to(root).with_suffix("")
    mod_name = "iii_steps." + ".".join(rel.parts)
    try:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise StepError(f"syntax error: {exc.msg}", file=file, line=exc.lineno) from None
    except ValidationError as exc:
        # A typed helper (Step(...), http(...)) rejected its arguments at import time,
        # before the Step object (and so its name) existed: read the name from the source.
        err = exc.errors()[0]
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise StepError(msg, file=file, step=_declared_name(path), field=_field_of(err), line=_line_of(exc, file)) from None
    except Exception as exc:
        raise StepError(f"import failed: {type(exc).__name__}: {exc}", file=file, line=_line_of(exc, file)) from None

    raw = getattr(module, "config", None)
    if raw is None:
        raise StepError("no `config` defined", file=file, field="config")
    name = raw.name if isinstance(raw, Step) else (raw.get("name") if isinstance(raw, dict) else None)
    try:
        if isinstance(raw, Step):
            step = raw
        elif isinstance(raw, dict):
            step = Step.model_validate(raw)
        else:
            raise StepError(f"`config` must be a Step or a dict, not {type(raw).__name__}", file=file, field="config")
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise StepError(msg, file=file, step=name if isinstance(name, str) else None, field=_field_of(err)) from None

    handler = getattr(module, "handler", None)
    if not callable(handler):
        raise StepError("no callable `handler` defined", file=file, step=step.name, field="handler")
    if call_arity(handler) == 0:
        raise StepError("handler must take (input, ctx) or (ctx)", file=file, step=step.name, field="handler")
    for t in step.topics:
        if t.startswith(RESERVED_TOPIC_PREFIX):
            raise StepError(f"topic {t!r}: names starting with '_' are reserved", file=file, step=step.name, field="triggers")
    return step.model_copy(update={"handler": handler, "file": file})


def discover(steps_dir: str | Path) -> StepSet:
    root = Path(steps_dir).resolve()
    out = StepSet()
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
        try:
            step = load_step_file(path, root)
        except StepError as err:
            out.errors.append(err)
            continue
        if step.name in names:
            out.errors.append(StepError(f"duplicate step name; also defined in {names[step.name]}", file=str(path), step=step.name, field="name"))
            continue
        names[step.name] = str(path)
        out.steps.append(step)
    routes: dict[tuple[str, str], str] = {}
    for step in list(out.steps):
        for t in step.of(HttpTrigger):
            key = (t.method, t.path)
            if key in routes:
                out.errors.append(StepError(f"route {t.describe()} is already served by step {routes[key]!r}", file=step.file, step=step.name, field="triggers"))
                out.steps.remove(step)
                break
            routes[key] = step.name
    return out
