"""10. Queue drain on both brokers: ours and bare Dramatiq, each on Redis and on RabbitMQ.

The drain of scenario 1 (pre-filled queue, no-op task, clock from the first
completion to the N-th as the task records them) for four contenders at 1×8
and 2×8: ours on Redis; ours with ``broker: rabbitmq`` (quorum queues, confirmed
publishes; Redis still holds the events and the worker registry); bare
Dramatiq's ``RedisBroker``; bare Dramatiq's stock ``RabbitmqBroker`` (classic
queues, no confirms: the peer as its users write it). The harness starts its
own RabbitMQ node (``tests/rabbitnode.py``: own ports, data, cookie, HOME);
without ``rabbitmq-server`` the RabbitMQ rows say why they were skipped.
"""

from __future__ import annotations

import math

from bench import contenders as c
from bench.env import Bench
from bench.report import Section
from bench.scenarios.queue import SHAPES, measure
from bench.stats import fmt, fmt_ratio, median, ratio, spread

NAME = "brokers"
TITLE = "10. Queue drain on both brokers (Redis and RabbitMQ), ours and bare Dramatiq"


def run(bench: Bench) -> Section:
    n = bench.options.messages
    ours, ours_rmq, dram, dram_rmq = c.ours(), c.ours_rabbit(), c.dramatiq(), c.dramatiq_rabbit()
    ours_rmq_high = c.ours_rabbit(priority="high")
    contenders = [ours, dram]
    skipped = None
    if bench.rabbit() is not None:
        contenders += [ours_rmq, dram_rmq, ours_rmq_high]
    else:
        skipped = bench.rabbit_skipped()
        print(f"  [{NAME}] RabbitMQ columns skipped: {skipped}", flush=True)
    runs = measure(bench, contenders, n, label=NAME)

    def med(name: str, shape: tuple[int, int], attr: str) -> float:
        return median(getattr(d, attr) for d in runs.get((name, shape), []))

    sec = Section(
        TITLE,
        header=[
            "contender",
            *(f"{p}×{t} msg/s" for p, t in SHAPES),
            *(f"ours on the same broker ÷ this {p}×{t}" for p, t in SHAPES),
            *(f"worker CPU ms/msg {p}×{t}" for p, t in SHAPES),
            *(f"Redis CPU µs/msg {p}×{t}" for p, t in SHAPES),
            *(f"RabbitMQ CPU µs/msg {p}×{t}" for p, t in SHAPES),
            "msg/s per round (min–max)",
        ],
    )
    same = {dram.name: ours.name, dram_rmq.name: ours_rmq.name, ours.name: ours.name, ours_rmq.name: ours_rmq.name}
    same[ours_rmq_high.name] = ours_rmq.name
    for con in (ours, ours_rmq, ours_rmq_high, dram, dram_rmq):
        if con not in contenders:
            sec.row(con.name, *(["—"] * (5 * len(SHAPES))), f"skipped: {skipped}")
            continue
        sec.row(
            con.name,
            *(fmt(med(con.name, s, "rate")) for s in SHAPES),
            *(fmt_ratio(ratio(med(same[con.name], s, "rate"), med(con.name, s, "rate"))) for s in SHAPES),
            *(fmt(med(con.name, s, "cpu_ms"), 2) for s in SHAPES),
            *(fmt(med(con.name, s, "redis_us")) for s in SHAPES),
            *(fmt(med(con.name, s, "rabbit_us")) for s in SHAPES),
            "; ".join(spread([d.rate for d in runs[(con.name, s)]]) or "—" for s in SHAPES),
        )
    for s in SHAPES:
        shape = f"{s[0]}×{s[1]}"
        sec.target(
            f"{shape} on Redis: ≥ 0.9 × Dramatiq's RedisBroker",
            ratio(med(ours.name, s, "rate"), med(dram.name, s, "rate")) >= 0.9,
        )
        r = ratio(med(ours_rmq.name, s, "rate"), med(dram_rmq.name, s, "rate"))
        sec.target(f"{shape} on RabbitMQ: ≥ 0.9 × Dramatiq's RabbitmqBroker", None if math.isnan(r) else r >= 0.9)
    sec.note(
        f"{n:,} messages per run; {bench.options.rounds} round(s), contenders alternated within each. Redis queues are "
        "filled once and `RESTORE`d before each run; RabbitMQ queues are purged and filled again before each run (our "
        "`RabbitProducer`, one confirmed publish per message; the stock broker's `actor.send`). The clock and the CPU "
        "columns start at the first completion. RabbitMQ CPU is the private node's processes (beam.smp and helpers). "
        "Ours on RabbitMQ still writes its events, heartbeats and registry to Redis: hence its Redis column."
    )
    if not skipped:
        sec.note(
            'The row "high priority" is ours on RabbitMQ with every message sent at `priority: high`. Quorum queues have '
            "no priorities, so each priority has its own queue and a normal message's consumer asks RabbitMQ whether the "
            "high queue has ready messages (a passive `queue.declare`, one round trip) before it runs a delivery, "
            "reusing an empty answer for 5 ms; the high queue's consumer has nothing to ask. The difference between "
            "the two rows is that check."
        )
    if skipped:
        sec.note(f"RabbitMQ rows skipped: {skipped}.")
    return sec
