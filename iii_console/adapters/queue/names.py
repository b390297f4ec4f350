"""How topics and steps map onto Dramatiq queues and actors.

Every (topic, step) subscription gets one Dramatiq queue per priority. A
high-priority message therefore never waits behind a normal backlog in Redis:
it sits in its own list, has its own consumer, and its actor's priority puts it
first in the worker's in-memory work queue too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from iii_console.core.keys import Keys
from iii_console.core.steps import PRIORITIES

#: Dramatiq orders its work queue by actor priority, lowest first.
ACTOR_PRIORITY = {"high": 0, "normal": 50, "low": 100}

#: Pseudo-topics of steps triggered by the scheduler and by state changes.
CRON_TOPIC = "_cron"
STATE_TOPIC = "_state"


@dataclass(frozen=True)
class Subscription:
    topic: str
    step: str

    def queue(self, priority: str) -> str:
        return f"{self.topic}--{self.step}--{priority}"

    def actor(self, priority: str) -> str:
        return f"{self.step}:{self.topic}:{priority}"

    @property
    def queues(self) -> list[str]:
        return [self.queue(p) for p in PRIORITIES]


@functools.lru_cache(maxsize=4096)
def parse_queue(queue_name: str) -> tuple[str, str, str]:
    """``message.sent--ProcessMessage--high`` -> (topic, step, priority); ``ValueError`` for another name.

    Memoised (a worker parses its few queue names several times per message).
    """
    base = queue_name.removesuffix(Keys.legacy_delay_name(""))
    topic, step, priority = base.rsplit("--", 2)
    return topic, step, priority
