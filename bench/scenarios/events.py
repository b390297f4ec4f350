"""4. Event overhead: scenario 1's drain for ours with the event stream on and off.

Off is ``events.enabled: false`` (every emit becomes a no-op); on is the default.
"""

from __future__ import annotations

from bench import contenders as c
from bench.env import Bench
from bench.report import Section
from bench.scenarios.queue import SHAPES, measure, medians, per_round
from bench.stats import fmt, ratio

NAME = "events"
TITLE = "4. Event overhead (queue drain, event stream on vs off)"


def run(bench: Bench) -> Section:
    on, off = c.ours(events=True), c.ours(events=False)
    runs = measure(bench, [on, off], bench.options.messages)
    med, cpu, _ = medians(runs)
    sec = Section(
        TITLE,
        header=[
            "shape",
            "events on msg/s",
            "events off msg/s",
            "overhead (1 − on ÷ off)",
            "CPU ms/msg on",
            "CPU ms/msg off",
            "CPU overhead (on ÷ off − 1)",
        ],
    )
    for s in SHAPES:
        r_on, r_off = med[(on.name, s)], med[(off.name, s)]
        c_on, c_off = cpu[(on.name, s)], cpu[(off.name, s)]
        overhead = 1 - ratio(r_on, r_off)
        sec.row(
            f"{s[0]}×{s[1]}",
            fmt(r_on),
            fmt(r_off),
            f"{overhead:+.1%}",
            fmt(c_on, 2),
            fmt(c_off, 2),
            f"{ratio(c_on, c_off) - 1:+.1%}",
        )
        rounds = [1 - r for r in per_round(runs, on.name, [off.name], s, "rate")]
        each = " / ".join(f"{o:+.0%}" for o in rounds)
        sec.target(f"{s[0]}×{s[1]}: throughput overhead ≤ 10%, every round ({each})", all(o <= 0.10 for o in rounds))
    sec.note(
        "Each message emits `message.started` and `message.processed`; a background sink "
        "thread writes each batch with one script call (the `XADD`s, one trim and the metric counters). Off = `events.enabled: false`."
    )
    return sec
