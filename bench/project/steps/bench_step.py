"""The benchmark's queue step: does exactly what the peers' tasks do (bench/work.py)."""

from __future__ import annotations

from typing import Any

from bench.work import work
from iii_console import Step, queue

config = Step(name="BenchWork", description="Benchmark no-op work", triggers=[queue("bench.work")])


def handler(data: Any, ctx: Any) -> None:
    work(data)
