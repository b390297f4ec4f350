"""``/metrics`` (Prometheus) and ``/health`` for the HTTP server.

Both read Redis, so any server of a deployment reports for all of it: counters
kept by the event sinks of every process (``core/metrics.py``), queue depths,
dead letters and worker heartbeats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from iii_console.core import metrics
from iii_console.core.dlq import DeadLetterStore
from iii_console.core.keys import Keys
from iii_console.core.queues import add_broker_depths, broker_delayed, broker_depths, queue_stats
from iii_console.core.redis_server import server_version, version_warning
from iii_console.core.redis_url import primary_of

#: Prometheus's exposition type without its charset: Litestar adds ``; charset=utf-8`` to every
#: ``text/`` type it answers with, and would otherwise say it twice.
METRICS_MEDIA_TYPE = "; ".join(p for p in CONTENT_TYPE_LATEST.split("; ") if not p.startswith("charset="))


log = logging.getLogger(__name__)

OUTCOMES = {
    "message.enqueued": "enqueued",
    "message.started": "started",
    "message.processed": "processed",
    "message.failed": "failed",
    "message.retrying": "retried",
    "message.dead_lettered": "dead_lettered",
    "message.replayed": "replayed",
    "message.redelivered": "redelivered",
    "message.throttled": "throttled",
    "message.deduplicated": "deduplicated",
}


def live_workers(client: redis.Redis, keys: Keys, timeout_s: float) -> tuple[list[str], list[str], int]:
    """(alive ids, stale ids, Redis now ms) judged by Redis's clock."""
    sec, usec = client.time()
    now = sec * 1000 + usec // 1000
    alive: list[str] = []
    stale: list[str] = []
    for wid, score in client.zrange(keys.worker_heartbeats, 0, -1, withscores=True):
        (alive if now - score <= timeout_s * 1000 else stale).append(wid.decode() if isinstance(wid, bytes) else wid)
    return alive, stale, now


class _Snapshot(Collector):
    def __init__(self, client: redis.Redis, keys: Keys, heartbeat_timeout: float):
        self.client, self.keys, self.timeout = client, keys, heartbeat_timeout

    def collect(self) -> Iterator[Any]:
        counts, hists = metrics.read(self.client, self.keys)
        msgs = CounterMetricFamily("iii_messages", "Messages by topic, step and outcome", labels=["topic", "step", "outcome"])
        retries = CounterMetricFamily("iii_message_retries", "Retries scheduled", labels=["topic", "step"])
        http = CounterMetricFamily("iii_http_requests", "Accepted HTTP requests by step", labels=["step"])
        notes = CounterMetricFamily("iii_notifications", "notification.sent events by step", labels=["step"])
        cron = CounterMetricFamily("iii_cron_ticks", "Cron ticks by step and outcome", labels=["step", "outcome"])
        errors = CounterMetricFamily("iii_step_errors", "step.error events by step", labels=["step"])
        #: Summed by label set: a counter may have been kept under more than one topic (cron events gained theirs).
        ticks: dict[tuple[str, str], int] = {}
        for (t, topic, step), n in sorted(counts.items()):
            if t in OUTCOMES:
                msgs.add_metric([topic, step, OUTCOMES[t]], n)
                if t == "message.retrying":
                    retries.add_metric([topic, step], n)
            elif t == "http.received":
                http.add_metric([step], n)
            elif t == "notification.sent":
                notes.add_metric([step], n)
            elif t in ("cron.fired", "cron.skipped"):
                outcome = (step, t.split(".")[1])
                ticks[outcome] = ticks.get(outcome, 0) + n
            elif t == "step.error":
                errors.add_metric([step], n)
        for (step, kind), n in sorted(ticks.items()):
            cron.add_metric([step, kind], n)
        yield from (msgs, retries, http, notes, cron, errors)

        dur = HistogramMetricFamily(
            "iii_message_processing_seconds", "Handler run time of finished attempts", labels=["topic", "step"]
        )
        for (topic, step), h in sorted(hists.items()):
            bounds = [str(b) for b in metrics.BUCKETS] + ["+Inf"]
            dur.add_metric([topic, step], [(b, h.buckets.get(b, 0)) for b in bounds], h.sum)
        yield dur

        topics = [t.decode() if isinstance(t, bytes) else t for t in self.client.hkeys(self.keys.queues_registry)]
        depth = GaugeMetricFamily("iii_queue_messages", "Messages per topic by state", labels=["topic", "state"])
        stats = queue_stats(self.client, self.keys, [t for t in topics if t != "default"])
        depths = broker_depths(self.client, self.keys)
        shared_delayed = broker_delayed(depths)
        for topic, st in sorted(add_broker_depths(stats, depths).items()):
            depth.add_metric([topic, "waiting"], st.waiting)
            if shared_delayed is None:  # else the broker's delays wait in queues shared by every topic: no per-topic count
                depth.add_metric([topic, "delayed"], st.delayed)
            depth.add_metric([topic, "in_flight"], st.in_flight)
        yield depth
        if shared_delayed is not None:
            yield GaugeMetricFamily(
                "iii_broker_delayed_messages",
                "Messages waiting out a delay (retries, delayed sends) in the broker's shared delay queues, all topics",
                value=shared_delayed,
            )

        store = DeadLetterStore(self.client, self.keys)
        dead = GaugeMetricFamily("iii_dead_letters", "Entries per dead-letter queue", labels=["dlq"])
        for name in store.names():
            dead.add_metric([name], store.count(name))
        yield dead

        alive, _stale, _now = live_workers(self.client, self.keys, self.timeout)
        yield GaugeMetricFamily("iii_workers", "Worker processes with a recent heartbeat", value=len(alive))


class BrokerDown(Exception):
    """The broker named ``name`` failed ``/health``'s check (``cause`` is logged, not answered)."""

    def __init__(self, name: str, cause: BaseException):
        super().__init__(name)
        self.name = name
        self.cause = cause


def routes(
    client: redis.Redis,
    keys: Keys,
    *,
    metrics_path: str,
    health_path: str,
    heartbeat_timeout: float,
    broker_check: tuple[str, Callable[[], None]] | None = None,
) -> list[Any]:
    """Litestar handlers for the configured paths (an empty path is left out).

    ``broker_check``: the name and check of a broker other than Redis (it raises when the
    broker is down); ``/health`` then answers 503 naming it, never its URL.
    """
    import anyio.to_thread

    out: list[Any] = []
    if metrics_path:

        def render() -> bytes:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Snapshot(client, keys, heartbeat_timeout))
            return generate_latest(registry)

        @get(metrics_path, name="iii:metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response[Any]:
            try:
                body = await anyio.to_thread.run_sync(render)
            except redis.RedisError as exc:
                return Response(
                    {"error": "storage unavailable", "detail": str(exc)}, status_code=503, headers={"Retry-After": "1"}
                )
            return Response(body, media_type=METRICS_MEDIA_TYPE)

        out.append(metrics_endpoint)
    if health_path:

        def check() -> dict[str, Any]:
            t0 = time.perf_counter()
            client.ping()
            latency = round((time.perf_counter() - t0) * 1000, 2)
            alive, stale, now = live_workers(client, keys, heartbeat_timeout)
            last = {
                w.decode() if isinstance(w, bytes) else w: int(now - s)
                for w, s in client.zrange(keys.worker_heartbeats, 0, -1, withscores=True)
            }
            version = server_version(client)
            broker: dict[str, Any] = {}
            if broker_check is not None:
                name, probe = broker_check
                t1 = time.perf_counter()
                try:
                    probe()
                except Exception as exc:
                    raise BrokerDown(name, exc) from None
                broker = {name: {"ok": True, "latency_ms": round((time.perf_counter() - t1) * 1000, 2)}}
            return {
                "status": "ok" if alive else "degraded",
                "redis": {
                    "ok": True,
                    "latency_ms": latency,
                    "version": version,
                    "warning": version_warning(version),
                    **({"primary": primary} if (primary := primary_of(client)) else {}),
                },
                **broker,
                "workers": {"alive": len(alive), "stale": stale, "ms_since_heartbeat": last},
            }

        @get(health_path, name="iii:health", include_in_schema=False)
        async def health_endpoint() -> Response[dict[str, Any]]:
            try:
                body = await anyio.to_thread.run_sync(check)
            except redis.RedisError as exc:
                # The health check is open without the token: say what, not where (no host, port or user).
                log.warning("health check: Redis unavailable: %s", exc)
                return Response(
                    {"status": "unavailable", "redis": {"ok": False, "error": type(exc).__name__}},
                    status_code=503,
                    headers={"Retry-After": "1"},
                )
            except BrokerDown as down:
                log.warning("health check: %s unavailable: %s", down.name, down.cause)
                return Response(
                    {
                        "status": "unavailable",
                        "redis": {"ok": True},
                        down.name: {
                            "ok": False,
                            "error": type(down.cause).__name__,
                            # RabbitMQ's reason for blocking publishes ("low on memory", "low on disk"), or what
                            # a publish without a confirm means (a cluster without a majority); never an address.
                            **({"blocked": str(down.cause)} if type(down.cause).__name__ == "PublishingBlocked" else {}),
                            **({"detail": str(down.cause)} if type(down.cause).__name__ == "ConfirmTimeout" else {}),
                        },
                    },
                    status_code=503,
                    headers={"Retry-After": "1"},
                )
            return Response(body, status_code=200)

        out.append(health_endpoint)
    return out
