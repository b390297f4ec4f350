"""``WAIT`` after the writes a failover must not lose (``redis.wait_replicas``, ``redis.wait_timeout_ms``).

Redis replicates asynchronously: a write the primary acknowledged can be gone after a
failover to a replica that had not received it. For most writes that costs at most a
repeat (a lost ack runs a message again), but a few claims would be broken by it: a cron
tick's once-key (the tick fires twice), a dead-letter replay (replayed twice), a state
trigger's or fan-in group's once-key, a RabbitMQ run-key (a once-only message runs
twice), and a state change (its trigger never fires). Those writes go through
:meth:`ReplicaWait.script` (and its async twin), which sends ``WAIT n timeout`` right
after the script *on the same connection* (one pipeline): ``WAIT`` covers the writes of
the connection it is sent on, so a ``WAIT`` on another pooled connection would prove
nothing. The hot queue path (plain enqueues, fetches, acks) never waits.

When fewer replicas than asked acknowledge within the timeout the write stands (it is
on the primary, and turning it into an error would lose work or repeat it): the caller
goes on, a warning is logged and a ``log`` event at level ``warning`` says the write may
not survive a failover. With ``wait_replicas: 0`` nothing is sent.

The setting is per process (like the redaction rule): :func:`configure` at start
(``Services.open`` does it from the configuration), :func:`current` where a write is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

log = logging.getLogger("iii_console.replication")

#: Called with ``(what, replicas acknowledged, replicas asked)`` when a WAIT came back short.
Report = Callable[[str, int, int], None]


class ReplicaWait:
    """How many replicas must acknowledge a guarded write, and how long to wait for them."""

    def __init__(self, replicas: int = 0, timeout_ms: int = 100, report: Report | None = None):
        if replicas < 0 or timeout_ms < 0:
            raise ValueError("wait_replicas and wait_timeout_ms must be 0 or more")
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.report = report
        #: WAITs sent, and those that came back with fewer replicas than asked (this process).
        self.waits = 0
        self.short = 0
        self._local = threading.local()
        self._last_warned = 0.0

    @property
    def on(self) -> bool:
        return self.replicas > 0

    @property
    def last(self) -> int | None:
        """Replicas that acknowledged this thread's last guarded write (``None``: it sent no WAIT)."""
        return getattr(self._local, "last", None)

    def script(self, client: Any, script: Any, *, keys: Sequence[Any] = (), args: Sequence[Any] = (), what: str) -> Any:
        """Run a registered script on ``client``, then ``WAIT`` on its connection when configured."""
        self._local.last = None
        if not self.on:
            return script(keys=list(keys), args=list(args))
        pipe = client.pipeline(transaction=False)
        script(keys=list(keys), args=list(args), client=pipe)
        pipe.wait(self.replicas, self.timeout_ms)
        with _demotion(what):
            result, acked = pipe.execute()
        if self._check(int(acked), what):
            _not_moved(pipe, what)
        return result

    def command(self, client: Any, name: str, *args: Any, what: str, **kw: Any) -> Any:
        """``client.<name>(*args, **kw)``, then ``WAIT`` on its connection when configured."""
        self._local.last = None
        if not self.on:
            return getattr(client, name)(*args, **kw)
        pipe = client.pipeline(transaction=False)
        getattr(pipe, name)(*args, **kw)
        pipe.wait(self.replicas, self.timeout_ms)
        with _demotion(what):
            result, acked = pipe.execute()
        if self._check(int(acked), what):
            _not_moved(pipe, what)
        return result

    def execute(self, pipe: Any, *, what: str) -> list[Any]:
        """``pipe.execute()`` (a pipeline without a transaction), with ``WAIT`` last on it when configured."""
        self._local.last = None
        if not self.on:
            return list(pipe.execute())
        pipe.wait(self.replicas, self.timeout_ms)
        with _demotion(what):
            *results, acked = pipe.execute()
        if self._check(int(acked), what):
            _not_moved(pipe, what)
        return results

    async def ascript(self, client: Any, script: Any, *, keys: Sequence[Any] = (), args: Sequence[Any] = (), what: str) -> Any:
        """:meth:`script` on a ``redis.asyncio`` client."""
        self._local.last = None
        if not self.on:
            return await script(keys=list(keys), args=list(args))
        pipe = client.pipeline(transaction=False)
        await script(keys=list(keys), args=list(args), client=pipe)  # queued on the pipeline (a coroutine all the same)
        pipe.wait(self.replicas, self.timeout_ms)
        with _demotion(what):
            result, acked = await pipe.execute()
        if self._check(int(acked), what):
            await _not_moved_async(pipe, what)
        return result

    def _check(self, acked: int, what: str) -> bool:
        """Count a ``WAIT``'s answer; whether it came back short (then warned of, and reported)."""
        self.waits += 1
        self._local.last = acked
        if acked >= self.replicas:
            return False
        self.short += 1
        now = time.monotonic()
        if now - self._last_warned >= 1.0:  # at most one line a second; every one is counted and reported
            self._last_warned = now
            log.warning(
                "%s: %d of %d replicas acknowledged it within %d ms; the write stands but may not survive a failover"
                " (%d such writes so far)",
                what,
                acked,
                self.replicas,
                self.timeout_ms,
                self.short,
            )
        if self.report is not None:
            try:
                self.report(what, acked, self.replicas)
            except Exception:  # a report must never fail the write it reports on
                log.exception("replication: reporting a short WAIT failed")
        return True


def _failing_over(state: Any) -> bool:
    """Whether a sentinel's view of the primary (``SENTINEL MASTER``) says it is failing it over now."""
    return isinstance(state, dict) and "failover_in_progress" in str(state.get("flags", ""))


def _moved(what: str, before: Any, after: Any, moving: bool) -> None:
    if after != before:
        raise redis.ConnectionError(
            f"{what}: the Redis primary moved from {before} to {after} under this write (no replica acknowledged it)"
        )
    if moving:
        # Between the replica's promotion and the sentinels naming it, the old primary still looks like the one.
        raise redis.ConnectionError(f"{what}: a failover of the Redis primary {before} is under way (no replica acknowledged it)")


def _not_moved(pipe: Any, what: str) -> None:
    """After a short ``WAIT`` under Sentinel: if the sentinels name another primary than the one the pool
    handed this write's connection to, or a sentinel is failing that one over, the write went to a primary
    about to be demoted (it goes on answering meanwhile: ``SENTINEL FAILOVER``) and will be lost with it.
    That is a lost primary (``503``, or a run again), not a write that stands. (The pool hands out
    connections to the primary it last heard of: ``redis_url.PRIMARY_CHECK_S``.)"""
    before = getattr(pipe.connection_pool, "master_address", None)  # None: a plain URL's pool
    if before is None:
        return
    pool = pipe.connection_pool
    try:
        after = pool.get_master_address()
        moving = any(_failing_over(sentinel.sentinel_master(pool.service_name)) for sentinel in pool.sentinel_manager.sentinels)
    except redis.RedisError:
        return  # the sentinels are not answering: nothing says the primary moved
    _moved(what, before, after, moving)


async def _not_moved_async(pipe: Any, what: str) -> None:
    """:func:`_not_moved` for a ``redis.asyncio`` pipeline."""
    before = getattr(pipe.connection_pool, "master_address", None)
    if before is None:
        return
    pool = pipe.connection_pool
    try:
        after = await pool.get_master_address()
        moving = False
        for sentinel in pool.sentinel_manager.sentinels:
            moving = moving or _failing_over(await sentinel.sentinel_master(pool.service_name))
    except redis.RedisError:
        return
    _moved(what, before, after, moving)


@contextmanager
def _demotion(what: str) -> Iterator[None]:
    """A guarded write whose node was demoted between the write and its ``WAIT`` (a failover: ``WAIT``
    refused on a replica) is a lost connection to the primary, not a refused command: the caller answers
    ``503`` or runs the message again once the new primary answers, as for a primary that died. (A write
    refused as read-only is already told apart: ``errors.redis_refuses_writes``.)
    """
    try:
        yield
    except redis.ResponseError as exc:
        text = str(exc)
        if "WAIT cannot be used with replica" in text:
            raise redis.ConnectionError(f"{what}: the Redis primary was demoted under this write ({text})") from exc
        raise


_current = ReplicaWait()


def configure(wait: ReplicaWait) -> ReplicaWait:
    """Make ``wait`` this process's setting; returns it."""
    global _current
    _current = wait
    return wait


def current() -> ReplicaWait:
    return _current


def from_config(redis_config: Any, report: Report | None = None) -> ReplicaWait:
    """The setting a ``RedisConfig`` asks for (``wait_replicas`` unset: 1 under Sentinel, else 0)."""
    return ReplicaWait(redis_config.effective_wait_replicas, redis_config.wait_timeout_ms, report)


def emitter_report(emitter: Any) -> Report:
    """A :data:`Report` that puts a ``log`` event at level ``warning`` on ``emitter``."""

    def report(what: str, acked: int, asked: int) -> None:
        emitter.emit(
            "log",
            data={
                "level": "warning",
                "message": f"{what}: {acked} of {asked} replicas acknowledged it; it may not survive a failover",
                "replicas_acked": acked,
                "replicas_asked": asked,
            },
        )

    return report
