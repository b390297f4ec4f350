"""Every Redis key iii-console touches, under one configurable prefix.

Keeping names here (and nowhere else) is what lets the console attach to a
deployment read-only and lets two projects share one Redis with different prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def as_str(v: Any) -> str:
    """A key, member or stream id read back from Redis (bytes: our clients do not decode) as text."""
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class Keys:
    prefix: str = "iii:"

    @property
    def events(self) -> str:
        """The capped lifecycle event stream the console tails."""
        return f"{self.prefix}events"

    @property
    def dramatiq_namespace(self) -> str:
        """Namespace passed to Dramatiq's Redis broker for its own queue keys."""
        return f"{self.prefix}q"

    # -- Dramatiq's queue layout. The queue adapter's Lua scripts build the same names from
    # -- the namespace they are given; Python spells them only here.
    def queue(self, name: str) -> str:
        """The list of message ids waiting on a Dramatiq queue (``topic--step--priority``)."""
        return f"{self.dramatiq_namespace}:{name}"

    def queue_bodies(self, name: str) -> str:
        """Hash: redis message id -> encoded message, for a queue (or an older version's ``.DQ``)."""
        return f"{self.queue(name)}.msgs"

    def queue_delayed(self, name: str) -> str:
        """Sorted set of a queue's delayed messages (retries, ``delay_ms``), scored by due time on Redis's clock."""
        return f"{self.queue(name)}.delayed"

    def queue_deliveries(self, name: str) -> str:
        """Hash: redis message id -> how many times it was fetched (``max_deliveries``)."""
        return f"{self.queue(name)}.deliveries"

    def queue_wake(self, name: str) -> str:
        """List an enqueue pushes a token to, so an idle consumer blocked on it wakes at once."""
        return f"{self.queue(name)}.wake"

    def queue_held(self, name: str) -> str:
        """Set of "queue\\nworker" held back by a backlog on ``name``: the fetch that drains it wakes each (``fetch.lua``)."""
        return f"{self.queue(name)}.held"

    def wake_hub(self, worker: str) -> str:
        """A broker's own wake list: pushed to make its wake hub take up a new queue, or stop."""
        return f"{self.dramatiq_namespace}:__hub__.{worker}"

    @staticmethod
    def legacy_delay_name(name: str) -> str:
        """An older version's delay queue of ``name`` (Dramatiq's ``.DQ``); its messages are migrated at start."""
        return f"{name}.DQ"

    def legacy_delay_queue(self, name: str) -> str:
        """The list of :meth:`legacy_delay_name` (its bodies: ``queue_bodies(legacy_delay_name(name))``)."""
        return self.queue(self.legacy_delay_name(name))

    @property
    def delayed_index(self) -> str:
        """Sorted set: queues with delayed messages, scored by their earliest due time."""
        return f"{self.dramatiq_namespace}:__delayed__"

    @property
    def delayed_wake(self) -> str:
        """List a delayed enqueue pushes a token to, waking the promoters."""
        return f"{self.delayed_index}.wake"

    def in_flight(self, worker_id: str, queue: str = "") -> str:
        """Set of redis message ids ``worker_id`` holds from ``queue``; with no queue, the prefix of its sets."""
        return f"{self.dramatiq_namespace}:__acks__.{worker_id}.{queue}"

    def in_flight_queue(self, key: str) -> tuple[str, str] | None:
        """``(worker id, queue)`` of an in-flight set's key (the worker id has no dots); None for another key."""
        prefix = f"{self.dramatiq_namespace}:__acks__."
        if not key.startswith(prefix) or "." not in key[len(prefix) :]:
            return None
        worker, queue = key[len(prefix) :].split(".", 1)
        return worker, queue

    def state_group(self, group: str) -> str:
        return f"{self.prefix}state:{group}"

    @property
    def state_groups(self) -> str:
        """Set of group names that hold at least one key."""
        return f"{self.prefix}state-groups"

    @property
    def state_changes(self) -> str:
        """Stream of state changes read by the trigger dispatcher's consumer group."""
        return f"{self.prefix}state-changes"

    @property
    def state_watched(self) -> str:
        """Set of groups some state step watches: only their changes go to ``state_changes``."""
        return f"{self.prefix}state-watched"

    def dlq(self, name: str) -> str:
        """Sorted set of dead-letter entry ids for one named DLQ, scored by last failure."""
        return f"{self.prefix}dlq:{name}"

    def dlq_entries(self, name: str) -> str:
        """Hash: entry id -> JSON entry for one named DLQ."""
        return f"{self.prefix}dlq:{name}:entries"

    @property
    def dlq_names(self) -> str:
        return f"{self.prefix}dlq-names"

    def cron_tick(self, step: str, expression: str, scheduled_ms: int) -> str:
        """Marker making one tick of one of a step's cron triggers fire once across scheduler processes.

        Keyed by the expression too: a step's triggers have ticks of their own, even
        when two fall on the same time.
        """
        return f"{self.prefix}cron:{step}:{expression}:{scheduled_ms}"

    def cron_last(self, step: str, expression: str) -> str:
        """JSON of the last tick any scheduler fired for this cron trigger of ``step``."""
        return f"{self.prefix}cron-last:{step}:{expression}"

    @property
    def workers(self) -> str:
        """Hash: worker id -> JSON description, refreshed by heartbeats."""
        return f"{self.prefix}workers"

    @property
    def worker_heartbeats(self) -> str:
        """Sorted set: worker id scored by its last heartbeat, in Redis server time (ms)."""
        return f"{self.prefix}workers-hb"

    @property
    def sweep_clock(self) -> str:
        """Redis time (ms) of the last sweep for dead workers by any process (``lua/sweep.lua``)."""
        return f"{self.prefix}sweep-clock"

    def once(self, token: str) -> str:
        """Marker that makes an enqueue happen once (state trigger dispatch)."""
        return f"{self.prefix}once:{token}"

    def progress(self, trace_id: str) -> str:
        """JSON of the latest ``ctx.progress`` of a trace (kept 24 h after its last update)."""
        return f"{self.prefix}progress:{trace_id}"

    def group(self, group_id: str) -> str:
        """Hash: a fan-in group's record (counts, children, its completion until it is enqueued)."""
        return f"{self.prefix}group:{group_id}"

    def throttle(self, topic: str, step: str, key: str) -> str:
        """Sorted set: the recent handler starts of one throttle key of a subscription (Redis-clock ms)."""
        return f"{self.prefix}throttle:{topic}:{step}:{key}"

    def throttle_running(self, topic: str, step: str, key: str) -> str:
        """Sorted set: ``worker|message`` holding one of a throttle key's running slots."""
        return f"{self.prefix}throttle-running:{topic}:{step}:{key}"

    def lock(self, name: str) -> str:
        """A lease (``ctx.lock``): holds its fencing token, expires with the lease."""
        return f"{self.prefix}lock:{name}"

    def lock_tokens(self, name: str) -> str:
        """Counter of a lock's fencing tokens (never expires, so tokens only grow)."""
        return f"{self.prefix}lock-tokens:{name}"

    def fence(self, resource: str) -> str:
        """The newest fencing token that touched ``resource`` (``lease.fence``)."""
        return f"{self.prefix}fence:{resource}"

    def dedup(self, topic: str, key: str) -> str:
        """Dedup key of an enqueue to ``topic``: holds the first message's ids (JSON) for its TTL."""
        return f"{self.prefix}dedup:{topic}:{key}"

    @property
    def steps_registry(self) -> str:
        """Hash: step name -> JSON description, published by the running project."""
        return f"{self.prefix}steps"

    @property
    def queues_registry(self) -> str:
        """Hash: topic -> JSON queue strategy, published by the running project."""
        return f"{self.prefix}queues"

    @property
    def deployment_registry(self) -> str:
        """Hash: facts about the running deployment (``broker``), published by the supervisor."""
        return f"{self.prefix}deployment"

    @property
    def broker_depths(self) -> str:
        """Hash: queue name (``topic--step--priority``) -> messages ready on a broker other than Redis.

        Copied from the broker every second by whoever talks to it, with a short TTL, so the
        console, which reads Redis only, sees depths that live elsewhere (and none once stale).
        """
        return f"{self.prefix}broker-depths"

    @property
    def broker_delays(self) -> str:
        """Set: the delays (ms) whose shared delay queue a broker other than Redis has declared.

        Written by whoever publishes to one (once per process and delay), so the depth copy knows
        which delay queues to count; their total is copied as ``broker_depths``'s ``delayed`` field.
        """
        return f"{self.prefix}broker-delays"

    @property
    def metrics_counts(self) -> str:
        """Hash: ``type|topic|step`` -> count of events, kept by the event sink."""
        return f"{self.prefix}metrics:counts"

    @property
    def metrics_durations(self) -> str:
        """Hash: ``topic|step|le`` -> processing-duration histogram buckets, plus ``…|sum`` and ``…|count``."""
        return f"{self.prefix}metrics:durations"
