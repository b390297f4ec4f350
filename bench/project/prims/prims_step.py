"""The primitives scenario's steps: a throttled call, fan-in children and their completion."""

from __future__ import annotations

import time
from typing import Any

from bench.work import client
from iii_console import Step, queue

config = Step(
    name="BenchPrims",
    description="Benchmark throttle and fan-in",
    triggers=[queue("bench.call"), queue("bench.child"), queue("bench.done")],
)


def handler(data: Any, ctx: Any) -> None:
    now = time.time()
    topic = ctx.trigger.get("topic")
    if topic == "bench.call":
        client().rpush(f"bench:calls:{data['key']}", now)
    elif topic == "bench.child":
        client().set(f"bench:child-last:{data['group']}", now)
    else:
        client().set(f"bench:done:{data['group_id']}", now)
