"""``python -m bench``: run the scenarios, print the Markdown report, keep it in ``bench/results/``."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType

from bench import deps

#: Scenario modules in run order (the console last: it is being built).
ORDER = ("queue", "http", "latency", "events", "priority", "memory", "console", "prims", "images", "brokers", "ceiling", "knee")
#: Run only when named in ``--only`` (long, and they start a RabbitMQ node): not part of the default run.
ON_REQUEST = ("brokers", "ceiling", "knee")
RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer messages, shorter loads, 1 round (for development)")
    ap.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help=f"comma-separated scenarios: {','.join(ORDER)} (the last three only when named here)",
    )
    ap.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 3; quick 1)")
    ap.add_argument("--messages", type=int, default=None, help="messages per queue drain (default 20,000; quick 4,000)")
    ap.add_argument("--latency-rate", type=int, default=None, help="scenario 3's steady rate, messages/s (default 200)")
    ap.add_argument(
        "--console-seconds",
        type=float,
        default=None,
        help="how long scenario 6 feeds the console (default 60; quick 30); 600 measures whether memory stays flat",
    )
    ap.add_argument("--no-install", action="store_true", help="do not pip/apt-install missing peers and tools")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to keep the report (default bench/results)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.no_install:
        if deps.ensure_python_deps():
            os.execv(sys.executable, [sys.executable, "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
        deps.ensure_wrk()
    elif deps.missing_modules():
        print(f"bench: missing {', '.join(deps.missing_modules())}; run `pip install -e .[bench]`", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [n for n in ORDER if n not in ON_REQUEST]
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        print(f"bench: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(ORDER)}", file=sys.stderr)
        return 2
    from bench.env import Bench, Options, stop_on_sigterm

    stop_on_sigterm()
    from bench.procs import BenchError
    from bench.report import Section, preamble, write

    overrides = {
        k: v
        for k, v in (
            ("rounds", args.rounds),
            ("messages", args.messages),
            ("latency_rate", args.latency_rate),
            ("console_seconds", args.console_seconds),
        )
        if v is not None
    }
    options = Options.quick_mode(**overrides) if args.quick else Options(**overrides)
    modules: list[ModuleType] = [importlib.import_module(f"bench.scenarios.{n}") for n in ORDER if n in names]
    started = dt.datetime.now()
    sections: list[str] = []
    with Bench(options) as bench:
        head = preamble(
            started=started, mode="quick" if options.quick else "full", rounds=options.rounds, redis_version=bench.redis_version()
        )
        for mod in modules:
            print(f"== {mod.TITLE}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                section = mod.run(bench)
            except BenchError as exc:
                section = Section(mod.TITLE)
                section.note(f"failed: {exc}")
            finally:
                bench.procs.stop_all()
            section.note(f"_({time.monotonic() - t0:.0f} s)_")
            sections.append(section.markdown())
            print(sections[-1], file=sys.stderr, flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = head + "\n" + "\n".join(sections) + f"\nLoad average at the end: {load}.\n"
    path = write(text, args.results, started)
    print(text)
    print(f"bench: report written to {path} and {args.results / 'latest.md'}", file=sys.stderr)
    return 0
