"""``iii-console new NAME``: a project of your own, from the files in ``template/``.

Each file is copied as it is, with ``{{name}}`` replaced by the project's name;
``gitignore`` becomes ``.gitignore`` (a dotfile would be left out of the wheel).
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from iii_console.core.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_RENAMES = {"gitignore": ".gitignore"}


def _files(node: Traversable, rel: Path = Path()) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            out += _files(child, rel / child.name)
        else:
            out.append((rel / _RENAMES.get(child.name, child.name), child.read_text()))
    return out


def create(target: Path) -> list[Path]:
    """Write a new project into ``target`` (which must not exist or be empty); returns the files written."""
    name = target.name
    if not _NAME.match(name):
        raise ConfigError(f"{name!r} is not a project name: a letter, then letters, digits, '_', '-' or '.'")
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} already exists and is not empty")
    written = []
    for rel, text in _files(resources.files("iii_console.scaffold") / "template"):
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{{name}}", name))
        written.append(path)
    return written
