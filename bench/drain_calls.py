"""What a drained message costs Redis, command by command, for ours and bare Dramatiq.

    .venv/bin/python -m bench.drain_calls [--messages 20000] [--shape 1x8] [--rounds 3]

Drains ``--messages`` no-op messages (scenario 1's work, ``bench/work.py``) with ours (events
on, then off) and with Dramatiq on a private Redis, alternated for ``--rounds`` rounds, and
prints per message, medians of the rounds: the drain rate, Redis's CPU (``used_cpu``), and for
each command its calls and time (``INFO commandstats``, reset before each drain; ``evalsha``'s
time includes the commands its scripts call, which are also listed on their own). With a
checkout of older code on ``PYTHONPATH``, the same command measures that code: run both and
compare.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench import contenders as c
from bench.drain import Drained, drain, restore_filled
from bench.env import Bench, Options

#: Commands not worth a row (the bench's own bookkeeping between drains).
_SKIP = {
    "config|resetstat",
    "flushall",
    "restore",
    "dump",
    "multi",
    "exec",
    "mget",
    "get",
    "scan",
    "info",
    "hlen",
    "zcard",
    "ping",
}


def _stats(bench: Bench, n: int) -> dict[str, tuple[float, float]]:
    """command -> (calls per message, µs per message) since the last ``CONFIG RESETSTAT``."""
    out = {}
    for key, v in bench.redis.info("commandstats").items():
        name = key.removeprefix("cmdstat_")
        if name not in _SKIP:
            out[name] = (v["calls"] / n, v["usec"] / n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.drain_calls", description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--shape", default="1x8", help="worker processes x threads (default 1x8)")
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    processes, threads = (int(x) for x in opts.shape.split("x"))
    contenders = [c.ours(), c.ours(events=False), c.dramatiq()]
    runs: dict[str, list[tuple[Drained, dict[str, tuple[float, float]]]]] = {}
    with Bench(Options(messages=opts.messages)) as bench:
        for rnd in range(opts.rounds):
            for con in contenders:
                stats: dict[str, Any] = {}

                def before_stop(_procs: Any, stats: dict[str, Any] = stats) -> None:
                    stats.update(_stats(bench, opts.messages))

                # Filled first (the first time, through the contender's own client), so the fill's
                # commands are not counted; the drain restores the filled keys (RESTORE, not shown).
                # Its workers' start-up calls are counted, and are few beside its messages.
                restore_filled(bench, con, opts.messages, {})
                bench.redis.config_resetstat()
                d = drain(bench, con, processes, threads, opts.messages, before_stop=before_stop)
                runs.setdefault(con.name, []).append((d, stats))
                print(f"  round {rnd + 1} {con.name}: {d.rate:,.0f} msg/s, Redis {d.redis_us:.0f} µs/msg", flush=True)
    print(f"\n{opts.messages:,} messages at {opts.shape}, {opts.rounds} rounds (medians)\n")
    for name, rows in runs.items():
        rate = statistics.median(d.rate for d, _ in rows)
        redis_us = statistics.median(d.redis_us for d, _ in rows)
        print(f"{name}: {rate:,.0f} msg/s, Redis CPU {redis_us:.1f} µs/msg")
        commands = sorted({k for _, s in rows for k in s}, key=lambda k: -statistics.median(s.get(k, (0, 0))[1] for _, s in rows))
        for k in commands[:12]:
            calls = statistics.median(s.get(k, (0.0, 0.0))[0] for _, s in rows)
            us = statistics.median(s.get(k, (0.0, 0.0))[1] for _, s in rows)
            print(f"  {k:16s} {calls:6.3f} calls/msg {us:7.1f} µs/msg")


if __name__ == "__main__":
    main()
