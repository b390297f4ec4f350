"""Where a drain's worker CPU goes between user code and the kernel: CPU and context switches per message.

    .venv/bin/python -m bench.switches [--shape 2x8] [--messages 20000] [--rounds 5] [--contenders ours,ours-off]

Drains ``--messages`` no-op messages (scenario 1's work) with each contender, alternated for
``--rounds`` rounds, and prints per message, medians of the rounds: the drain rate, the worker
processes' user and system CPU and their voluntary and involuntary context switches (psutil,
from the first completed message to the last), and Redis's CPU. A thread that parks on a
lock or a socket and is woken again costs a voluntary switch and, under a contended GIL, often
a second one to take the GIL back: on a machine whose cores are all busy these show up as
system CPU, which the CPU columns of scenario 1 count but do not separate. Like every figure
on this machine the rates move by ±10 % between runs: compare medians of several rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import threading
import time
from typing import Any

import psutil

from bench import contenders as c
from bench.drain import drain
from bench.env import Bench, Options
from bench.procs import Proc

_CONTENDERS = {"ours": lambda: c.ours(), "ours-off": lambda: c.ours(events=False), "dramatiq": c.dramatiq}


def _totals(procs: list[Proc]) -> tuple[float, float, int, int]:
    """(user s, system s, voluntary, involuntary switches) of ``procs`` and their children."""
    user = system = 0.0
    vol = invol = 0
    for proc in procs:
        for p in proc.tree():
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user, system = user + t.user, system + t.system
            v, i = _switches(p)
            vol, invol = vol + v, invol + i
    return user, system, vol, invol


def _switches(p: psutil.Process) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of ``p``.

    On Linux ``/proc/PID/status`` (what psutil reads) counts the main thread's only; the
    threads' own counts are under ``/proc/PID/task``.
    """
    vol = invol = 0
    try:
        tids = os.listdir(f"/proc/{p.pid}/task")
    except OSError:
        try:
            cs = p.num_ctx_switches()
        except psutil.NoSuchProcess:
            return 0, 0
        return cs.voluntary, cs.involuntary
    for tid in tids:
        try:
            with open(f"/proc/{p.pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            continue  # a thread that ended meanwhile
    return vol, invol


def run_one(bench: Bench, name: str, processes: int, threads: int, n: int) -> dict[str, float]:
    contender = _CONTENDERS[name]()
    marks: dict[str, Any] = {}

    def start(b: Bench, p: int, t: int, target: int) -> list[Proc]:
        procs = contender.start(b, p, t, target)

        def first() -> None:
            while b.done() == 0 and "end" not in marks:
                time.sleep(0.005)
            marks["start"] = (b.done(), _totals(procs))

        threading.Thread(target=first, daemon=True).start()
        return procs

    def before_stop(procs: list[Proc]) -> None:
        marks["end"] = (bench.done(), _totals(procs))

    d = drain(bench, dataclasses.replace(contender, start=start), processes, threads, n, before_stop=before_stop)
    (d0, t0), (d1, t1) = marks["start"], marks["end"]
    per = max(1, d1 - d0)
    return {
        "msg/s": d.rate,
        "user µs": (t1[0] - t0[0]) * 1e6 / per,
        "system µs": (t1[1] - t0[1]) * 1e6 / per,
        "voluntary": (t1[2] - t0[2]) / per,
        "involuntary": (t1[3] - t0[3]) / per,
        "Redis µs": d.redis_us,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.switches", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="2x8", help="worker processes x threads (default 2x8)")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--contenders", default="ours,ours-off", help="any of ours, ours-off, dramatiq")
    opts = ap.parse_args()
    processes, threads = (int(x) for x in opts.shape.split("x"))
    names = [x.strip() for x in opts.contenders.split(",") if x.strip()]
    unknown = [x for x in names if x not in _CONTENDERS]
    if unknown:
        ap.error(f"--contenders: unknown {', '.join(unknown)} (known: {', '.join(_CONTENDERS)})")
    runs: dict[str, list[dict[str, float]]] = {}
    with Bench(Options(messages=opts.messages)) as bench:
        for rnd in range(opts.rounds):
            for name in names:
                r = run_one(bench, name, processes, threads, opts.messages)
                runs.setdefault(name, []).append(r)
                print(f"  round {rnd + 1} {name}: " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()), flush=True)
    cols = list(next(iter(runs.values()))[0])
    print(
        f"\n{processes} worker process(es) x {threads} threads, {opts.messages:,} messages, medians of {opts.rounds} round(s), per message\n"
    )
    print("| contender | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, rs in runs.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[k] for r in rs):,.1f}" for k in cols) + " |")


if __name__ == "__main__":
    main()
