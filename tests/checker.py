"""A Jepsen-style checker for message delivery (after RabbitMQ's).

Every message carries a key. The test step counts its executions per key and
applies its effect at most once per key, both in one Redis transaction. After
a run the checker compares what was sent with what took effect and reports
lost, unexpected and duplicated effects, duplicate executions and stuck messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from iii_console.core.keys import Keys

EFFECT_STEP = """
import redis
from iii_console import Step, queue

config = Step(name="Effect", triggers=[queue("chaos")])
_clients = {}
APPLY = \"\"\"
redis.call("HINCRBY", "chaos:executions", ARGV[1], 1)
if redis.call("SADD", "chaos:done", ARGV[1]) == 1 then redis.call("RPUSH", "chaos:effects", ARGV[1]) end
\"\"\"


def handler(data, ctx):
    url = data["redis"]
    r = _clients.get(url) or _clients.setdefault(url, redis.Redis.from_url(url))
    # Count the execution and apply the effect at most once per key, atomically.
    r.eval(APPLY, 0, data["key"])
    if data.get("work_ms"):
        import time
        time.sleep(data["work_ms"] / 1000)
"""


@dataclass
class Report:
    sent: int
    effects: int
    lost: int
    unexpected: int
    duplicated_effects: int
    duplicate_executions: int
    stuck: int

    def table(self) -> str:
        rows = [(k, getattr(self, k)) for k in ("sent", "effects", "lost", "unexpected", "duplicated_effects", "duplicate_executions", "stuck")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(["| check | count |", "|---|---:|", *(f"| {k:<{width}} | {v} |" for k, v in rows)])


def check(client: redis.Redis, keys: Keys, sent: set[str]) -> Report:
    effects = [k.decode() for k in client.lrange("chaos:effects", 0, -1)]
    execs = {k.decode(): int(v) for k, v in client.hgetall("chaos:executions").items()}
    ns = keys.dramatiq_namespace
    stuck = 0
    for k in client.scan_iter(match=f"{ns}:chaos--*"):
        name = k.decode()
        if name.endswith((".msgs",)):
            stuck += client.hlen(k)
    effect_set = set(effects)
    return Report(
        sent=len(sent),
        effects=len(effect_set),
        lost=len(sent - effect_set),
        unexpected=len(effect_set - sent),
        duplicated_effects=len(effects) - len(effect_set),
        duplicate_executions=sum(n - 1 for n in execs.values() if n > 1),
        stuck=stuck,
    )
