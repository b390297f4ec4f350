"""The headless core imports without Textual, Litestar or Dramatiq (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import iii_console.core

FORBIDDEN = ("textual", "litestar", "dramatiq")
CORE_MODULES = (
    "config",
    "steps",
    "discovery",
    "events",
    "emitter",
    "state",
    "dlq",
    "keys",
    "errors",
    "context",
    "cronexpr",
    "redis_server",
)


def loaded_after(imports: list[str]) -> dict[str, list[str]]:
    """Import ``imports`` in a fresh interpreter; report which forbidden top-level packages got loaded."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {imports!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps({{'forbidden': sorted(m for m in {FORBIDDEN!r} if m in sys.modules),"
        " 'imported': sorted(m for m in sys.modules if m.startswith('iii_console'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_named_core_modules_all_exist():
    """Given the core package, when listing its modules, then every module this suite checks is among them."""
    present = {m.name for m in pkgutil.iter_modules(iii_console.core.__path__)}
    assert set(CORE_MODULES) <= present


def test_core_and_all_its_modules_import_without_ui_server_or_queue_libraries():
    """Given a fresh interpreter, when iii_console.core and every core module are imported, then textual, litestar and dramatiq are not loaded."""
    every = sorted({*CORE_MODULES, *(m.name for m in pkgutil.iter_modules(iii_console.core.__path__))})
    names = ["iii_console.core", *(f"iii_console.core.{m}" for m in every)]
    out = loaded_after(names)
    assert out["forbidden"] == []
    assert set(names) <= set(out["imported"])  # the imports really happened


def test_package_root_imports_without_them():
    """Given a fresh interpreter, when the step-facing package root is imported, then textual, litestar and dramatiq are not loaded."""
    out = loaded_after(["iii_console"])
    assert out["forbidden"] == []
    assert "iii_console" in out["imported"]


def test_the_probe_does_see_a_forbidden_import():
    """Given a fresh interpreter, when dramatiq itself is imported, then the probe reports it (so the checks above can fail)."""
    assert loaded_after(["dramatiq"])["forbidden"] == ["dramatiq"]
