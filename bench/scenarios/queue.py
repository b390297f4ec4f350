"""1. Queue throughput: drain 20,000 messages to a no-op step, ours against Dramatiq and Celery.

Every contender's task does the same thing (``bench/work.py``: one ``INCR``).
The queue is pre-filled, the workers started, and the drain timed from the
first completion to the last, as recorded by the task itself.
"""

from __future__ import annotations

import math

from bench import contenders as c
from bench.drain import Drained, drain
from bench.env import Bench
from bench.report import Section
from bench.stats import fmt, fmt_ratio, median, ratio, spread

NAME = "queue"
TITLE = "1. Queue throughput (no-op step, pre-filled queue)"
SHAPES = ((1, 8), (2, 8))


Samples = dict[tuple[str, tuple[int, int]], list[Drained]]


def measure(bench: Bench, contenders: list[c.QueueContender], n: int, label: str = NAME) -> Samples:
    """Rounds × shapes × contenders, alternating contenders within each round."""
    runs: Samples = {}
    for rnd in range(bench.options.rounds):
        for shape in SHAPES:
            for con in contenders:
                d = drain(bench, con, shape[0], shape[1], n)
                runs.setdefault((con.name, shape), []).append(d)
                rabbit = "" if math.isnan(d.rabbit_us) else f", RabbitMQ {d.rabbit_us:.0f} µs/msg"
                print(
                    f"  [{label}] round {rnd + 1} {shape[0]}x{shape[1]} {con.name}: {d.rate:,.0f} msg/s, "
                    f"{d.cpu_ms:.2f} ms CPU/msg, Redis {d.redis_us:.0f} µs/msg{rabbit}",
                    flush=True,
                )
    return runs


def medians(runs: Samples) -> tuple[dict, dict, dict]:
    """(rate, worker CPU ms/msg, Redis µs/msg) medians by (contender, shape)."""
    return (
        {k: median(d.rate for d in v) for k, v in runs.items()},
        {k: median(d.cpu_ms for d in v) for k, v in runs.items()},
        {k: median(d.redis_us for d in v) for k, v in runs.items()},
    )


def per_round(runs: Samples, ours: str, peers: list[str], shape: tuple[int, int], what: str) -> list[float]:
    """Ours ÷ the best of ``peers`` in each round (contenders alternate within a round, so a round is a fair pair)."""
    out = []
    for i, mine in enumerate(runs[(ours, shape)]):
        best = max(getattr(runs[(p, shape)][i], what) for p in peers)
        out.append(ratio(getattr(mine, what), best))
    return out


def fmt_rounds(ratios: list[float]) -> str:
    return " / ".join(f"{r:.2f}×" for r in ratios)


def run(bench: Bench) -> Section:
    n = bench.options.messages
    ours = c.ours()
    contenders = [ours, c.dramatiq(), c.celery("prefork"), c.celery("threads")]
    runs = measure(bench, contenders, n)
    med, cpu, rus = medians(runs)

    sec = Section(
        TITLE,
        header=[
            "contender",
            *(f"{p}×{t} msg/s" for p, t in SHAPES),
            *(f"ours ÷ this {p}×{t}" for p, t in SHAPES),
            "worker CPU ms/msg (1×8)",
            "Redis CPU µs/msg (1×8)",
            "msg/s per round (min–max)",
        ],
    )
    for con in contenders:
        sec.row(
            con.name,
            *(fmt(med[(con.name, s)]) for s in SHAPES),
            *(fmt_ratio(ratio(med[(ours.name, s)], med[(con.name, s)])) for s in SHAPES),
            fmt(cpu[(con.name, SHAPES[0])], 2),
            fmt(rus[(con.name, SHAPES[0])]),
            "; ".join(spread([d.rate for d in runs[(con.name, s)]]) or "—" for s in SHAPES),
        )
    dram = c.dramatiq().name
    for s in SHAPES:
        shape = f"{s[0]}×{s[1]}"
        vs_dram = per_round(runs, ours.name, [dram], s, "rate")
        vs_celery = per_round(runs, ours.name, [f"Celery ({pool})" for pool in ("prefork", "threads")], s, "rate")
        sec.target(f"{shape}: ≥ 1.0 × Dramatiq (events on), every round ({fmt_rounds(vs_dram)})", all(r >= 1.0 for r in vs_dram))
        sec.target(
            f"{shape}: ≥ 2.5 × the faster Celery pool, every round ({fmt_rounds(vs_celery)})", all(r >= 2.5 for r in vs_celery)
        )
    # Lower is better here: ours ÷ Dramatiq's Redis CPU per message.
    redis_ratio = per_round(runs, ours.name, [dram], SHAPES[0], "redis_us")
    sec.target(
        f"Redis CPU per message (1×8) ≤ 1.2 × Dramatiq's, every round ({fmt_rounds(redis_ratio)})",
        all(r <= 1.2 for r in redis_ratio),
    )
    sec.note(
        f"{n:,} messages per run; workers are real processes (ours: `python -m iii_console.runtime.worker` as the "
        "supervisor spawns them; Dramatiq: `dramatiq --processes P --threads 8`; Celery: P × "
        "`celery worker -P prefork|threads -c 8`). Clock: first to last completion, written by the task to Redis. "
        "CPU columns count from the first completion on (startup excluded) and are far less sensitive to other "
        "load on the machine than msg/s."
    )
    return sec
