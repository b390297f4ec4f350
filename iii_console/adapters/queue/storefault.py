"""Failures of the deployment's own Redis, told apart from a handler's own.

A handler whose state write or enqueue meets no Redis, or a Redis that refuses writes for where
it is (full at ``maxmemory`` with ``noeviction``, read-only, busy: ``core.errors.redis_refuses_writes``),
failed for where it ran, not for what it is:
``RetryPolicy`` runs it again without spending an attempt. ``store_fault`` judges a failure by
asking that Redis now; ``StoreGate`` lets a consumer that can fetch without Redis (RabbitMQ's)
hold its deliveries while Redis is known to fail them, so a Redis outage does not run every
waiting message's handler up to its first write, over and over.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Literal, cast

import redis

from iii_console.core.errors import redis_refuses_writes
from iii_console.core.keys import Keys

log = logging.getLogger(__name__)

Fault = Literal["unreachable", "refuses_writes"]

#: A handler that failed for its store runs again after this, doubling up to the cap.
STORE_WAIT_MS = 500
STORE_WAIT_CAP_MS = 30_000
#: While the gate is shut, how often its own thread asks Redis whether it is back.
GATE_PROBE_S = 0.5


def fault_in(exc: BaseException) -> Fault | None:
    """The kind of store failure in ``exc``'s chain (it, its cause, its context, eight deep), if any."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, (redis.ConnectionError, redis.TimeoutError)):
            return "unreachable"
        if isinstance(seen, redis.RedisError) and redis_refuses_writes(seen):
            return "refuses_writes"
        seen = seen.__cause__ or seen.__context__
    return None


def probe(client: redis.Redis, kind: Fault, keys: Keys | None = None) -> Fault | None:
    """Whether the Redis behind ``client`` still fails as ``kind`` does (or now the other way).

    ``unreachable`` is asked with a ``PING``. ``refuses_writes`` with a write that writes nothing,
    ``SETRANGE <prefix>probe 0 ""`` (an empty value on a missing key): Redis checks ``maxmemory``
    and read-only before it runs any write, so the probe is refused exactly when a handler's write
    would be, on Redis 6.2 as on 7. A full Redis still answers ``PING``.
    """
    try:
        if kind == "unreachable":
            client.ping()
        else:
            client.setrange(f"{(keys or Keys()).prefix}probe", 0, "")
    except (redis.ConnectionError, redis.TimeoutError):
        return "unreachable"
    except redis.RedisError as exc:
        return "refuses_writes" if redis_refuses_writes(exc) else None
    return None


def store_fault(broker: Any, exc: BaseException) -> Fault | None:
    """Whether ``exc`` is (or was raised while handling) a failure of the deployment's own Redis rather than of
    the handler: its kind, while that Redis still fails that way (``probe``); ``None`` otherwise.

    A handler's own connection to something else that fails, or its own other Redis that is full, while ours
    answers and takes writes, is a failure like any other (it spends an attempt). A fault found shuts the
    broker's ``StoreGate``, if it has one.
    """
    kind = fault_in(exc)
    client = getattr(broker, "client", None)
    if kind is None or client is None:
        return None
    keys = getattr(broker, "keys", None)
    found = probe(client, kind, keys if isinstance(keys, Keys) else None)
    gate = getattr(broker, "store_gate", None)
    if found is not None and isinstance(gate, StoreGate):
        gate.shut(found)
    return found


class StoreGate:
    """Open while the deployment's Redis takes a handler's writes as far as this process knows.

    Shut by ``store_fault`` when a handler failed for its store. While shut, a thread of its own
    probes Redis every ``probe_s`` and opens the gate once a probe finds it back, unless a new
    fault was found meanwhile. ``open()`` only reads a flag: a consumer asking it never waits on
    Redis (a Redis that accepts connections but never answers holds a probe for as long as the
    client's timeouts and retries allow), so it goes on serving its own connection meanwhile.
    """

    def __init__(self, client: redis.Redis, keys: Keys | None = None, probe_s: float = GATE_PROBE_S):
        self.client = client
        self.keys = keys
        self.probe_s = probe_s
        self._kind: Fault | None = None
        #: Faults found so far: a probe that succeeds opens the gate only if none was found while it ran.
        self._shuts = 0
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None

    @property
    def shut_for(self) -> Fault | None:
        """Why the gate is shut, or ``None`` when it is open."""
        return self._kind

    def open(self) -> bool:
        return self._kind is None

    def shut(self, kind: Fault) -> None:
        with self._lock:
            self._shuts += 1
            self._kind = kind
            if self._prober is not None and self._prober.is_alive():
                return
            self._prober = threading.Thread(target=self._probe_until_back, name="iii-store-gate", daemon=True)
            self._prober.start()
        log.warning(
            "Redis %s: holding new deliveries until it %s",
            "is unreachable" if kind == "unreachable" else "refuses writes",
            "answers" if kind == "unreachable" else "takes writes",
        )

    def _probe_until_back(self) -> None:
        while True:
            time.sleep(self.probe_s)
            with self._lock:  # only this thread opens the gate: it is shut for some kind here
                kind, shuts = cast(Fault, self._kind), self._shuts
            still = probe(self.client, kind, self.keys)
            with self._lock:
                if self._shuts != shuts:
                    continue  # a fault was found while this probe ran: ask again
                if still is None:
                    self._kind, self._prober = None, None
                    break
                self._kind = still
        log.warning("Redis is back: delivering again")
