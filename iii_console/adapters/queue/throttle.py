"""Per-key throttling across every worker process (``queues.TOPIC.throttle``,
``queues.TOPIC.concurrency_per_key``).

Checked as a message is about to start, in Redis (``lua/throttle.lua``): a
sliding window of the key's recent starts, and the key's running slots held
by live workers. A handler that starts more than :data:`LATE_MS` after its
admission (a worker's first messages, a slow input check) has its record in
the window moved to its real start (``lua/throttle_started.lua``), so the
window counts when handlers start, not only when they were let through; one
that starts more than the period after it (its record gone from the window,
others admitted in its place) is admitted again, or sent back to wait
(:class:`ThrottledAtStart`). A message over either limit does not start: it goes back to
its queue's delayed set until the window has room (``move.lua`` through the
consumer's settle, with a ``message.throttled`` event), its attempt not spent.
A message whose data has no value at the key's path is dead-lettered, since
waiting cannot give it one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import SkipMessage

from iii_console.adapters.queue.deadletters import attempts_of, dead
from iii_console.adapters.queue.names import parse_queue
from iii_console.core.config import Config
from iii_console.core.emitter import Emitter

log = logging.getLogger(__name__)
#: How long a message waits when Redis cannot be asked (it is not run unthrottled).
UNKNOWN_WAIT_MS = 1000
#: A handler starting this long after its admission moves its record in the window to its start.
LATE_MS = 5.0
_MISSING = object()


def key_value(data: Any, path: str) -> str | None:
    """The throttle key named by ``path`` (dotted) in ``data``, as text; None if absent or not a scalar."""
    node = data
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is _MISSING:
            return None
    if isinstance(node, bool) or node is None or not isinstance(node, (str, int, float)):
        return None
    text = str(node)
    return text if 0 < len(text) <= 256 else None


class ThrottledAtStart(Exception):
    """Raised as a handler is about to start too late for its admission: its key's window filled up since.

    Handled by ``RetryPolicy`` as a throttle at admission is: the message goes back
    to wait ``wait_ms``, its attempt not spent, with a ``message.throttled`` event (``data``).
    """

    def __init__(self, wait_ms: int, data: dict[str, Any]):
        super().__init__(f"throttled at its start: the key's window filled up since its admission; waits {wait_ms} ms")
        self.wait_ms = wait_ms
        self.data = data


def _throttled(value: str, th: Any, strategy: Any, reason: str, wait_ms: int) -> dict[str, Any]:
    """The ``data`` of a ``message.throttled`` event: the key, why and how long it waits, the limits."""
    return {
        "key": value,
        "reason": reason,
        "wait_ms": wait_ms,
        "limit": th.limit,
        "period_ms": th.period_ms,
        "concurrency_per_key": strategy.concurrency_per_key,
    }


class Throttle(dramatiq.Middleware):
    def __init__(self, config: Config, emitter: Emitter):
        self.config = config
        self.emitter = emitter
        #: message id -> (running key, member) for messages holding a running slot.
        self._held: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def before_process_message(self, broker: Any, message: Any) -> None:
        topic = message.options.get("topic", "")
        strategy = self.config.queue(topic)
        th = strategy.throttle
        if th is None:
            return
        own = self.config.queues.get(topic)
        if topic.startswith(("_cron.", "_state.")) and (own is None or own.throttle is None):
            return  # a throttle in `default` is about messages' data, not cron ticks or state changes
        try:
            _t, step, _p = parse_queue(message.queue_name)
        except ValueError:
            return
        where = {
            "message_id": message.message_id,
            "trace_id": message.options.get("trace_id", ""),
            "step": step,
            "topic": topic,
            "queue": message.queue_name,
            "attempt": message.options.get("retries", 0) + 1,
        }
        value = key_value(message.args[0] if message.args else None, th.key)
        if value is None:
            error = (
                f"throttle key {th.key!r} has no value in the message data (a string or number of 1 to 256 "
                f"characters is needed; queues.{topic}.throttle.key)"
            )
            message.options["iii_outcome"] = dead(strategy.dead_letter_queue, error, attempts=attempts_of(message), fanin="dead")
            raise SkipMessage(error)
        keys = broker.keys
        win = keys.throttle(topic, step, value) if th.limit else ""
        running = keys.throttle_running(topic, step, value) if strategy.concurrency_per_key else ""
        member = f"{broker.broker_id}|{message.message_id}"
        # A message once sent back at its start (its handler starts more than a period after an admission
        # here) is admitted to the window at its start from then on: admitted here again, its record would
        # leave the window before its start, and two such messages could send each other back for good.
        at_start = bool(win) and bool(message.options.get("iii_throttle_at_start"))
        try:
            verdict, wait = broker.iii_scripts.throttle(
                args=[
                    "" if at_start else win,
                    th.limit or 0,
                    th.period_ms or 0,
                    running,
                    strategy.concurrency_per_key or 0,
                    member,
                    keys.worker_heartbeats,
                    int(self.config.workers.heartbeat_timeout * 1000),
                ]
            )
            reason = {1: "concurrency_per_key", 2: "limit"}.get(int(verdict), "")
        except redis.RedisError as exc:
            log.warning("throttle check for %s failed: %s; it waits %d ms", message.message_id, exc, UNKNOWN_WAIT_MS)
            verdict, wait, reason = -1, UNKNOWN_WAIT_MS, "redis unavailable"
        if int(verdict) == 0:
            if running:
                with self._lock:
                    self._held[message.message_id] = (running, member)
            if win:  # admitted: the second value is Redis's now, which names the start's record (member|now)
                if at_start:  # admitted to the window by the start hook, under a member of its own; since: none
                    message.iii_admitted = (win, f"{member}|start-{int(wait)}", th, strategy, value, None)
                else:
                    message.iii_admitted = (win, f"{member}|{int(wait)}", th, strategy, value, time.monotonic())
            return
        message.options["throttled"] = int(message.options.get("throttled", 0) or 0) + 1
        message.options["iii_outcome"] = {"kind": "retry", "delay_ms": int(wait)}
        message.iii_event = self.emitter.make(
            "message.throttled", **where, data=_throttled(value, th, strategy, reason, int(wait))
        )
        raise SkipMessage("throttled")

    def starting(self, broker: Any, message: Any) -> None:
        """Called as the handler of an admitted ``message`` starts: if that is more than
        :data:`LATE_MS` after its admission, its record in the window moves to now, or, if
        the record has left the window since (or the message is admitted at its start, having
        been sent back at one before), the start is admitted now: raises
        :class:`ThrottledAtStart` when the window is full. On a Redis error the handler
        still starts if an admission of it is counted, else it waits as at admission."""
        # Every message's start passes here: a dict lookup, not the proxy's failing attribute lookup (~1 µs).
        admitted = vars(message).pop("iii_admitted", None)
        if admitted is None:
            return
        win, recorded, th, strategy, value, since = admitted
        if since is not None and (time.monotonic() - since) * 1000 < LATE_MS:
            return
        try:
            verdict, wait = broker.iii_scripts.throttle_started(args=[win, recorded, th.period_ms, th.limit])
            reason = "limit"
        except redis.RedisError as exc:
            if since is not None:  # its admission is counted: it may start
                log.warning("moving the throttle record of %s to its start failed: %s", message.message_id, exc)
                return
            log.warning("throttle check for %s failed: %s; it waits %d ms", message.message_id, exc, UNKNOWN_WAIT_MS)
            verdict, wait, reason = -1, UNKNOWN_WAIT_MS, "redis unavailable"
        if int(verdict) != 0:
            raise ThrottledAtStart(int(wait), {**_throttled(value, th, strategy, reason, int(wait)), "at_start": True})

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._release(broker, message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._release(broker, message)

    def _release(self, broker: Any, message: Any) -> None:
        with self._lock:
            held = self._held.pop(message.message_id, None)
        if held is None:
            return
        for _ in range(20):
            try:
                broker.client.zrem(*held)
                return
            except redis.RedisError as exc:
                log.warning("releasing the throttle slot of %s: %s; retrying", message.message_id, exc)
                threading.Event().wait(0.25)
