"""The state-trigger dispatcher: state changes in, state steps' messages out.

Every state write to a watched group appends a record to ``state-changes`` in
the same script as the change (``core/state.py``). Each worker process with
state steps runs one dispatcher: a thread that reads the records through the
consumer group ``triggers``, evaluates each state step's group, key glob and
condition, and enqueues the matching steps under a once-key per change and step
(so a record delivered twice fires once). Records a dead dispatcher read but
never acknowledged are claimed by the others on every sweep
(:meth:`TriggerDispatcher.claim_stale`).

The dispatcher owns its thread: entered, it registers the watched groups and
starts reading; exited, it stops and joins. :meth:`reload` swaps the steps it
evaluates.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from typing import Any

import redis

from iii_console.adapters.queue.names import STATE_TOPIC
from iii_console.adapters.queue.producer import Producer
from iii_console.core.context import StateChange
from iii_console.core.discovery import StepSet, emit_step_error
from iii_console.core.keys import Keys, as_str
from iii_console.core.steps import StateTrigger, Step
from iii_console.runtime.services import Services

log = logging.getLogger(__name__)
TRIGGER_GROUP = "triggers"
#: How long the published steps' watched groups are taken as read (``TriggerDispatcher._newer_version_watches``).
REGISTRY_TTL_S = 1.0
#: A record no running version's dispatcher took within this long is acknowledged anyway (with a warning):
#: the registry watches its group, but no worker with that step ever started.
UNCLAIMED_MAX_MS = 10 * 60 * 1000
#: At most this often the dispatcher drops the trigger records it is done with
#: (the sweep does too, every ``sweep_interval``).
TRIM_EVERY_S = 1.0


def ensure_trigger_group(client: redis.Redis, key: str) -> None:
    """Create the state-trigger consumer group, from the stream's start, if missing.

    Called by the supervisor before anything can change state, and by a
    dispatcher that finds the group gone (Redis lost its data). From the start,
    not the end: records written before the group existed (the first changes
    after a restart without persistence) are changes like any other, and the
    once-key per change and step stops a record already dispatched from firing
    again.
    """
    try:
        client.xgroup_create(key, TRIGGER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def watch_state_triggers(client: redis.Redis, keys: Keys, steps: StepSet) -> None:
    """Record the groups these steps' state triggers watch, then make sure the consumer group exists.

    Only changes to watched groups are written to the trigger stream (each
    record holds the whole old and new value). The supervisor calls this when it
    publishes the steps, at start and on every reload, before anything of the
    new version can write state; each worker with state steps calls it as it
    starts and on every sweep (Redis may have lost its data). Groups are only
    ever added: another process may still run a version that watches one.
    """
    groups = sorted({t.watched for step in steps.state_steps() for t in step.of(StateTrigger)})
    # The "" member keeps the set in existence even when nothing is watched: a
    # state write that finds no set at all (Redis lost its data and nobody has
    # registered again yet) records its change whatever the group, so no change
    # to a watched group is missed in that window.
    client.sadd(keys.state_watched, "", *groups)
    ensure_trigger_group(client, keys.state_changes)


def trim_dispatched_changes(client: redis.Redis, key: str) -> None:
    """Drop the trigger records every dispatcher is done with.

    The stream is also capped (``CHANGES_MAXLEN``), but its records carry whole
    values: kept to the cap, large values would fill Redis. What is pending (read
    by a dispatcher, not acknowledged) or not yet delivered stays.
    """
    try:
        group = next((g for g in client.xinfo_groups(key) if as_str(g["name"]) == TRIGGER_GROUP), None)
    except redis.ResponseError:  # no stream yet
        return
    if group is None:
        return
    keep_from = as_str(client.xpending(key, TRIGGER_GROUP)["min"]) if group["pending"] else as_str(group["last-delivered-id"])
    if keep_from and keep_from != "0-0":
        client.xtrim(key, minid=keep_from, approximate=False)


class TriggerDispatcher:
    """Reads ``state-changes`` as consumer ``consumer`` of the group ``triggers`` and enqueues the matching state steps."""

    def __init__(self, services: Services, producer: Producer, steps: StepSet, *, consumer: str, guard: Any = None) -> None:
        self.services = services
        self.producer = producer
        self.steps = steps
        self.consumer = consumer
        #: Wraps the read loop so a Redis error or a crash restarts it (the worker's ``_guard``).
        self._guard = guard or (lambda fn, stop: fn)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: (when read, groups) of the published steps' state triggers ("*" for any group).
        self._published: tuple[float, set[str]] = (float("-inf"), set())

    def __enter__(self) -> TriggerDispatcher:
        if self.steps.state_steps():
            self._thread = threading.Thread(target=self._guard(self._run, self._stop), name="iii-state-dispatch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def reload(self, steps: StepSet) -> None:
        """Evaluate ``steps`` from the next record on (and start reading if they are the first state steps)."""
        self.steps = steps
        if self._thread is None and steps.state_steps() and not self._stop.is_set():
            watch_state_triggers(self.services.client, self.services.keys, steps)
            self.__enter__()

    def _run(self) -> None:
        c = self.services.client
        key = self.services.keys.state_changes
        trimmed = time.monotonic()
        while not self._stop.is_set():
            try:
                got: Any = c.xreadgroup(TRIGGER_GROUP, self.consumer, {key: ">"}, count=100, block=500)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis lost its data (a restart without persistence, a flush): register again.
                watch_state_triggers(c, self.services.keys, self.steps)
                continue
            for _stream, entries in got or []:
                self._ack([(eid, f) for eid, f in entries if self.dispatch(eid, f)])
            if got and time.monotonic() - trimmed >= TRIM_EVERY_S:
                trim_dispatched_changes(c, key)
                trimmed = time.monotonic()

    def claim_stale(self, min_idle_ms: int) -> int:
        """Dispatch the records another dispatcher read but did not acknowledge within ``min_idle_ms``."""
        if not self.steps.state_steps():
            return 0
        c = self.services.client
        # Registered at start, and again here: if Redis lost the watched set (a restart
        # without persistence, a flush), no trigger record would be written again.
        watch_state_triggers(c, self.services.keys, self.steps)
        try:
            res = c.xautoclaim(
                self.services.keys.state_changes,
                TRIGGER_GROUP,
                self.consumer,
                min_idle_time=min_idle_ms,
                start_id="0-0",
                count=100,
            )
        except redis.ResponseError:
            return 0
        entries = res[1]
        # A record trimmed away since it was read has no fields: nothing to dispatch, acknowledged.
        self._ack([(eid, f) for eid, f in entries if not f or self.dispatch(eid, f)])
        trim_dispatched_changes(c, self.services.keys.state_changes)
        return len(entries)

    def _ack(self, entries: list[Any]) -> None:
        """One ``XACK`` for the records of a read, once each is dispatched.

        Most records match no step and cost nothing else, so a round trip each was
        most of the dispatcher's time. A record dispatched but not yet acknowledged
        when this process dies is claimed again; its once-keys make that enqueue
        nothing twice.
        """
        if entries:
            self.services.client.xack(self.services.keys.state_changes, TRIGGER_GROUP, *[eid for eid, _f in entries])

    def dispatch(self, entry_id: Any, fields: dict[Any, Any]) -> bool:
        """Enqueue the triggers of one state-change record; whether it is done with (the caller acknowledges it).

        A record of a group none of this process's state steps watches, while the published
        steps (the newest version's, ``steps_registry``) do, is not done with: a newer version
        brought in that step (a reload, a rolling deploy) and this worker is an older one still
        draining. Left pending, it is claimed by a dispatcher of the newer version
        (:meth:`claim_stale`), not acknowledged unseen by this one.
        """
        f = {as_str(k): as_str(v) for k, v in fields.items()}
        eid = as_str(entry_id)
        if not self._watches(f["group"]) and self._newer_version_watches(f["group"]):
            age_ms = time.time() * 1000 - int(eid.split("-", 1)[0])
            if age_ms < UNCLAIMED_MAX_MS:
                return False
            log.warning(
                "state change %s of %s/%s: no running worker has the state step that watches its group; dropped",
                eid,
                f["group"],
                f["key"],
            )
            return True
        change = StateChange(
            group=f["group"], key=f["key"], old=json.loads(f["old"]), new=json.loads(f["new"]), trace_id=f.get("trace_id", "")
        )
        for step in self.steps.state_steps():
            if not any(t.matches(change.group, change.key) and self._condition(step, t, change) for t in step.of(StateTrigger)):
                continue
            self.producer.enqueue(
                f"{STATE_TOPIC}.{step.name}",
                {"group": change.group, "key": change.key, "old": change.old, "new": change.new, "trace_id": change.trace_id},
                trace_id=change.trace_id,
                source="state",
                once=self.services.keys.once(f"{eid}:{step.name}"),
                limit_size=False,  # the change is already stored: its trigger must not be refused for its size
            )
        return True

    def _watches(self, group: str) -> bool:
        """Whether a state step of this process watches ``group`` (or every group)."""
        return any(t.group is None or t.group == group for step in self.steps.state_steps() for t in step.of(StateTrigger))

    def _newer_version_watches(self, group: str) -> bool:
        """Whether the published steps (``steps_registry``, read at most every ``REGISTRY_TTL_S``) watch ``group``."""
        read_at, groups = self._published
        if time.monotonic() - read_at >= REGISTRY_TTL_S:
            groups = set()
            try:
                for raw in self.services.client.hvals(self.services.keys.steps_registry):
                    for spec in json.loads(raw).get("trigger_specs", []):
                        if spec.get("type") == "state":
                            groups.add(spec.get("group") or "*")
            except (redis.RedisError, ValueError, AttributeError):
                groups = set()  # unknown: this process's own steps decide, as before
            self._published = (time.monotonic(), groups)
        return group in groups or "*" in groups

    def _condition(self, step: Step, trig: StateTrigger, change: StateChange) -> bool:
        if trig.condition is None:
            return True
        try:
            verdict = trig.condition(change)
            if inspect.isawaitable(verdict):  # a condition that returns a coroutine: never true by accident
                getattr(verdict, "close", lambda: None)()
                raise TypeError("the condition returned an awaitable: it must return True or False")
            return bool(verdict)
        except Exception as exc:
            emit_step_error(
                self.services.emitter,
                f"state condition raised {type(exc).__name__}: {exc}",
                step=step.name,
                file=step.file,
                trace_id=change.trace_id,
            )
            return False
