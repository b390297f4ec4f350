"""A call a step forgot to ``await``, reported where the user looks.

In an ``async def`` handler, ``ctx.enqueue(...)`` or ``ctx.state.set(...)`` without ``await``
makes a coroutine that never runs: nothing is enqueued or written, the run ends as
processed, and Python's only word is a ``RuntimeWarning`` on the process's stderr (in the
console, a file under ``.iii/logs/``). Python warns as the coroutine is dropped, in the line
that made it; when that line is in one of the project's step files, this turns the warning
into a ``log`` event at error level naming the file, the line, the step and what was not
awaited, which the console shows under Problems. The warning still goes where it went.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_NEVER_AWAITED = re.compile(r"coroutine '([^']+)' was never awaited")
_lock = threading.Lock()
#: ``warnings.showwarning`` as it was before the first :func:`install`, which every report passes on to.
_original: Callable[..., Any] | None = None


def install_for(emit: Callable[..., None], config: Any, steps: Any) -> None:
    """:func:`install` for a process running ``steps`` (a ``StepSet``) of the project ``config``."""
    files = {str(Path(s.file).resolve()): s.name for s in steps.steps if getattr(s, "file", None)}
    install(emit, Path(config.steps_path), files.get)


def install(emit: Callable[..., None], steps_dir: Path, step_of: Callable[[str], str | None]) -> None:
    """Report never-awaited coroutines made in files under ``steps_dir`` through ``emit`` (``Emitter.emit``);
    ``step_of(file)`` names the step a file holds. Once per process (a second call replaces the first's target)."""
    global _original
    root = str(steps_dir.resolve())

    def report(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        m = _NEVER_AWAITED.search(str(message)) if issubclass(category, RuntimeWarning) else None
        where = str(Path(filename).resolve()) if m is not None else ""
        if m is not None and where.startswith(root):
            try:
                emit(
                    "log",
                    step=step_of(where),
                    data={
                        "level": "error",
                        "message": (
                            f"{filename}:{lineno}: {m.group(1)}(...) was not awaited, so it did nothing "
                            "(write `await` before the call)"
                        ),
                        "file": filename,
                        "line": lineno,
                    },
                )
            except Exception:  # a report must never break the run that caused it
                pass
        assert _original is not None  # set below, before this hook is installed
        _original(message, category, filename, lineno, file, line)

    with _lock:
        if _original is None:
            _original = warnings.showwarning
        warnings.showwarning = report
