"""Scenario results as Markdown: one section per scenario, each a table plus notes."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass
class Section:
    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Target checks: (what, met?) pairs; met is None when not measurable.
    targets: list[tuple[str, bool | None]] = field(default_factory=list)

    def row(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def target(self, what: str, met: bool | None) -> None:
        self.targets.append((what, met))

    def markdown(self) -> str:
        out = [f"## {self.title}", ""]
        if self.header:
            out.append("| " + " | ".join(self.header) + " |")
            out.append("|" + "|".join("---" for _ in self.header) + "|")
            out.extend("| " + " | ".join(r) + " |" for r in self.rows)
            out.append("")
        for what, met in self.targets:
            mark = "n/a" if met is None else ("met" if met else "**missed**")
            out.append(f"- target {what}: {mark}")
        if self.targets:
            out.append("")
        out.extend(f"{n}" for n in self.notes)
        if self.notes:
            out.append("")
        return "\n".join(out)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def preamble(*, started: dt.datetime, mode: str, rounds: int, redis_version: str) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(f"{d} {_version(d)}" for d in ("iii-console", "dramatiq", "celery", "litestar", "uvicorn", "redis"))
    return "\n".join(
        [
            f"# iii-console benchmarks — {started:%Y-%m-%d %H:%M:%S}",
            "",
            f"- mode: {mode}, {rounds} round(s) per scenario, contenders alternated within each round, medians reported",
            f"- machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, load average at start {load}",
            f"- Redis {redis_version} (one private server for the whole run, appendonly off, flushed between runs)",
            f"- {versions}",
            "",
        ]
    )


def write(text: str, results_dir: Path, started: dt.datetime) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{started:%Y%m%d-%H%M%S}.md"
    path.write_text(text)
    (results_dir / "latest.md").write_text(text)
    return path
