"""Instructions per drained message, counted by callgrind: ours (events on and off) and bare Dramatiq.

    .venv/bin/python -m bench.instructions [--contenders ours,ours-off,dramatiq] [--window 500:3500] [--threads 8]

Each contender's one worker process runs under ``valgrind --tool=callgrind`` with counting
off; it is switched on (``callgrind_control``) once ``W0`` messages are done and off at
``W1``, so start-up and the drain's ends do not count. The figure is the process's
instructions in that window (every thread: handlers, consumers, the event sink) divided by
the messages done in it. Unlike CPU seconds it does not move with the machine's other load
or its system-call cost: the same code gives the same count to about 1 %, so a change of a few
per cent in the worker's own work shows. Its limits:

- it counts user-space instructions only (not system calls, not Redis), and an instruction is
  not a fixed time;
- valgrind runs the threads one at a time, some fifty times slower than natively (the rate in
  the window is printed), so acks group differently than in a real drain, and work done per
  unit of time rather than per message weighs more per message than it does at full speed:
  the event sink's flushes every 20 ms, heartbeats, the histograms' once a second. With
  ``--separate-threads=yes`` (by hand) the event sink's thread takes ~70k instructions per
  message under valgrind, about a tenth of that at full speed. Compare code with code under
  this tool, not its figure with a CPU-seconds one.

Ours runs ``python -m iii_console.runtime.worker`` as the supervisor spawns it; Dramatiq,
``bench/peers/dramatiq_worker.py``: a ``dramatiq.Worker`` over the stock ``RedisBroker``, as
the CLI's worker child runs it.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import contenders as c
from bench.drain import restore_filled
from bench.env import PY, ROOT, Bench, Options
from bench.procs import wait_until

_CONTENDERS = {"ours": lambda: c.ours(), "ours-off": lambda: c.ours(events=False), "dramatiq": c.dramatiq}


def _argv(name: str, bench: Bench, threads: int) -> tuple[list[str], dict[str, str], Path | None]:
    if name == "dramatiq":
        return [PY, str(ROOT / "bench" / "peers" / "dramatiq_worker.py"), str(threads)], {}, None
    config = c.our_config(bench, events=name == "ours")
    env = {"III_CONFIG_JSON": config.model_dump_json(), "III_WORKER_INDEX": "0", "III_WORKER_THREADS": str(threads)}
    return [PY, "-m", "iii_console.runtime.worker"], env, bench.project_dir


def count(bench: Bench, name: str, w0: int, w1: int, threads: int, out_dir: Path) -> tuple[int, float, float]:
    """(messages in the window, instructions per message, messages per second under valgrind) for one contender."""
    contender = _CONTENDERS[name]()
    n = w1 + 200  # the drain goes on past the window: its end (idle threads) does not count
    restore_filled(bench, contender, n, {})
    argv, env, cwd = _argv(name, bench, threads)
    out = out_dir / f"callgrind.{name}.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    proc = bench.procs.start(f"callgrind-{name}", [*valgrind, *argv], env={**env, "BENCH_TARGET": str(n)}, cwd=cwd)
    watch = lambda: bench.procs.check(proc)  # noqa: E731
    try:
        wait_until(lambda: bench.done() >= w0, timeout=900, interval=0.02, what=f"{name} to reach {w0}", watch=watch)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
        d0, t0 = bench.done(), time.monotonic()
        wait_until(lambda: bench.done() >= w1, timeout=1800, interval=0.02, what=f"{name} to reach {w1}", watch=watch)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
        d1, t1 = bench.done(), time.monotonic()
    finally:
        bench.procs.stop(proc)
    total = 0
    for path in glob.glob(f"{out}*"):
        with open(path) as fh:
            total += sum(int(line.split()[1]) for line in fh if line.startswith("totals:"))
    return d1 - d0, total / max(1, d1 - d0), (d1 - d0) / max(1e-6, t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--contenders", default="ours,ours-off,dramatiq", help="any of ours, ours-off, dramatiq")
    ap.add_argument("--window", default="500:3500", help="messages done when counting starts and stops")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="keep each contender's callgrind output here (for callgrind_annotate)")
    opts = ap.parse_args()
    names = [n.strip() for n in opts.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in _CONTENDERS]
    if unknown:
        ap.error(f"--contenders: unknown {', '.join(unknown)} (known: {', '.join(_CONTENDERS)})")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("bench.instructions needs valgrind (Debian: apt-get install valgrind)")
    w0, w1 = (int(x) for x in opts.window.split(":"))
    with tempfile.TemporaryDirectory(prefix="iii-callgrind-") as tmp, Bench(Options(messages=w1 + 200)) as bench:
        results: dict[str, list[float]] = {}
        for rnd in range(opts.rounds):
            for name in names:
                done, per, rate = count(bench, name, w0, w1, opts.threads, Path(tmp))
                if opts.keep:
                    Path(opts.keep).mkdir(parents=True, exist_ok=True)
                    for f in glob.glob(str(Path(tmp) / f"callgrind.{name}.out*")):
                        shutil.copy(f, Path(opts.keep) / f"{Path(f).name}.{rnd + 1}")
                results.setdefault(name, []).append(per)
                print(
                    f"  round {rnd + 1} {name}: {per / 1000:,.1f}k instructions per message ({done} messages, {rate:,.0f}/s under valgrind)",
                    flush=True,
                )
    print(f"\n1 worker process x {opts.threads} threads, messages {w0}-{w1} of each drain\n")
    base = results.get("dramatiq")
    for name, counts in results.items():
        best = min(counts)
        ratio = f", {best / min(base):.2f}x Dramatiq's" if base and name != "dramatiq" else ""
        print(f"{name:10s} {best / 1000:8,.1f}k instructions per message{ratio}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
