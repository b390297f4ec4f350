"""11. The single-Redis ceiling: how many messages/s one Redis core carries, ours and bare Dramatiq.

Drains (as in scenario 1) at a rising number of worker processes × 8 threads,
each started on an empty queue and given its messages only once every process
is waiting for work (``drain(..., warm=True)``), so none is still importing
while the others drain. Two figures per contender, kept apart in the report:

- **measured**: the best msg/s reached, with the share of one core Redis was
  busy at that point. On a 2-core machine the workers themselves need the
  cores, so Redis is not saturated and this is a floor of the ceiling;
- **computed**: 1 s ÷ Redis CPU per message, the rate at which Redis would be
  100 % busy on one core if the per-message cost held (it does not grow with
  the number of processes here; see the per-shape column).

Beside it, RabbitMQ (ours with ``broker: rabbitmq``, and Dramatiq's stock
``RabbitmqBroker``): the same computation from the node's CPU per message (one
core's worth; RabbitMQ spreads over several schedulers, Redis runs commands on one).
"""

from __future__ import annotations

import math

from bench import contenders as c
from bench.drain import Drained, drain
from bench.env import Bench
from bench.report import Section
from bench.stats import fmt, median

NAME = "ceiling"
TITLE = "11. The single-Redis ceiling (msg/s per Redis core), with RabbitMQ beside it"
THREADS = 8


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{x * 100:.0f} %"


def _per_core(us: float) -> float:
    return math.nan if math.isnan(us) or us <= 0 else 1e6 / us


def run(bench: Bench) -> Section:
    o = bench.options
    n = o.messages
    redis_side = [c.ours(), c.dramatiq()]
    rabbit_side = [c.ours_rabbit(), c.dramatiq_rabbit()] if bench.rabbit() is not None else []
    rabbit_p = max(p for p in o.ceiling_processes if p <= 2) if o.ceiling_processes else 2
    runs: dict[tuple[str, int], list[Drained]] = {}
    for rnd in range(o.rounds):
        for p in o.ceiling_processes:
            for con in redis_side:
                d = drain(bench, con, p, THREADS, n, warm=True)
                runs.setdefault((con.name, p), []).append(d)
                print(
                    f"  [{NAME}] round {rnd + 1} {p}x{THREADS} {con.name}: {d.rate:,.0f} msg/s, Redis {d.redis_us:.0f} µs/msg, "
                    f"Redis busy {d.redis_core * 100:.0f} %",
                    flush=True,
                )
        for con in rabbit_side:
            d = drain(bench, con, rabbit_p, THREADS, n)
            runs.setdefault((con.name, rabbit_p), []).append(d)
            print(
                f"  [{NAME}] round {rnd + 1} {rabbit_p}x{THREADS} {con.name}: {d.rate:,.0f} msg/s, "
                f"RabbitMQ {d.rabbit_us:.0f} µs/msg, busy {d.rabbit_core * 100:.0f} %",
                flush=True,
            )

    def med(name: str, p: int, attr: str) -> float:
        return median(getattr(d, attr) for d in runs.get((name, p), []))

    sec = Section(
        TITLE,
        header=[
            "contender",
            "processes × threads",
            "msg/s (measured)",
            "worker CPU ms/msg",
            "Redis CPU µs/msg",
            "Redis busy (one core)",
            "msg/s at one full Redis core (computed)",
            "same, net of the task's own Redis work (computed)",
            "RabbitMQ CPU µs/msg",
            "RabbitMQ busy (of one core)",
            "msg/s per RabbitMQ core (computed)",
        ],
    )
    # The task's own Redis work (INCR and marks, bench/work.py) is all Redis does for Dramatiq on RabbitMQ.
    task_us = med(rabbit_side[1].name, rabbit_p, "redis_us") if rabbit_side else math.nan
    for con in [*redis_side, *rabbit_side]:
        for p in sorted({q for (name, q) in runs if name == con.name}):
            rabbit_us = med(con.name, p, "rabbit_us")
            net = med(con.name, p, "redis_us") - task_us
            sec.row(
                con.name,
                f"{p} × {THREADS}",
                fmt(med(con.name, p, "rate")),
                fmt(med(con.name, p, "cpu_ms"), 2),
                fmt(med(con.name, p, "redis_us")),
                _pct(med(con.name, p, "redis_core")),
                fmt(_per_core(med(con.name, p, "redis_us"))),
                fmt(_per_core(net)) if con in redis_side else "—",
                fmt(rabbit_us),
                _pct(med(con.name, p, "rabbit_core")),
                fmt(_per_core(rabbit_us)),
            )
    for con in redis_side:
        ps = [p for p in o.ceiling_processes if (con.name, p) in runs]
        if not ps:
            continue
        best = max(ps, key=lambda p: med(con.name, p, "rate"))
        top = ps[-1]
        sec.note(
            f"**{con.name}**: measured {fmt(med(con.name, best, 'rate'))} msg/s at {best} × {THREADS} with Redis "
            f"{_pct(med(con.name, best, 'redis_core'))} busy (not saturated: a floor); computed ceiling "
            f"{fmt(_per_core(med(con.name, top, 'redis_us')))} msg/s per Redis core (1 s ÷ "
            f"{fmt(med(con.name, top, 'redis_us'))} µs at {top} × {THREADS})"
            + (
                "."
                if math.isnan(task_us)
                else f", {fmt(_per_core(med(con.name, top, 'redis_us') - task_us))} net of the task's own Redis work."
            )
        )
    for con in rabbit_side:
        sec.note(
            f"**{con.name}**: computed {fmt(_per_core(med(con.name, rabbit_p, 'rabbit_us')))} msg/s per RabbitMQ core "
            f"(1 s ÷ {fmt(med(con.name, rabbit_p, 'rabbit_us'))} µs of the node's CPU per message at {rabbit_p} × {THREADS}; "
            f"measured {fmt(med(con.name, rabbit_p, 'rate'))} msg/s), plus {fmt(med(con.name, rabbit_p, 'redis_us'))} µs "
            "of Redis per message."
        )
    if not rabbit_side:
        sec.note(f"RabbitMQ rows skipped: {bench.rabbit_skipped()}; without them the task's own Redis work is not known.")
    else:
        sec.note(
            f"The task's own Redis work (its `INCR` and the first/last marks, `bench/work.py`) is counted in every Redis "
            f"column; Dramatiq on RabbitMQ uses Redis for nothing else, so its {fmt(task_us)} µs per message is taken "
            'as that share and subtracted in the "net" column: the framework\'s own Redis cost per message.'
        )
    sec.note(
        f"{n:,} messages per drain, {o.rounds} round(s). Measured rates are limited by the 2 shared cores the workers "
        "and Redis compete for, not by Redis; the computed figures assume the per-message Redis (or RabbitMQ) CPU stays "
        "what it was here when more hosts' workers share the server."
    )
    return sec
