"""The per-process bundle of clients every role needs: Redis, keys, event sink, emitter."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from iii_console.core.config import Config
from iii_console.core.emitter import Emitter, StreamSink, null_emitter
from iii_console.core.events import set_redaction
from iii_console.core.keys import Keys
from iii_console.core.redis_url import client_from_url


def fast_retry() -> Retry:
    """Retry a dropped connection a few times within ~0.5 s, then fail.

    redis-py's default (10 tries, up to 1 s apart) makes every call hang for
    seconds while Redis is down; our callers have their own recovery loops and
    the HTTP server must answer 503 promptly instead.
    """
    return Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), 3)


def redis_client(url: str, **kw: Any) -> redis.Redis:
    """A client that fails fast instead of hanging when Redis is away."""
    kw.setdefault("retry", fast_retry())
    kw.setdefault("socket_connect_timeout", 2)
    kw.setdefault("socket_timeout", 10)
    kw.setdefault("health_check_interval", 15)
    # A worker's idle queue consumers each block on a connection of this pool (BLPOP on the
    # queue's wake list), one per queue: three priorities and a delay queue per subscription.
    # redis-py 8 caps a pool at 100 connections by default ("Too many connections" past ~25
    # subscriptions, which crashed the worker at start); the need is bounded by the steps.
    kw.setdefault("max_connections", 10_000)
    return client_from_url(url, **kw)


def process_name(role: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


@dataclass
class Services:
    config: Config
    role: str
    client: redis.Redis
    keys: Keys
    sink: StreamSink
    emitter: Emitter
    name: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    #: Span export (``adapters/telemetry``) when this process traces, else ``None``.
    tracing: Any = None

    @classmethod
    def open(cls, config: Config, role: str, *, traced: bool = False) -> "Services":
        """``traced``: this process serves requests or runs messages, so it exports spans when
        tracing is configured (the CLI's one-shot commands do not)."""
        set_redaction(config.events.redact)
        client = redis_client(config.redis.url)
        keys = Keys(config.redis.prefix)
        sink = StreamSink(client, keys.events, maxlen=config.events.maxlen, keys=keys)
        name = process_name(role)
        emitter = (Emitter(sink, worker=name, trace_id=uuid.uuid4().hex) if config.events.enabled
                   else null_emitter())
        tracing = None
        if traced:
            from iii_console.adapters.telemetry import start

            tracing = start(config, role)
        return cls(config, role, client, keys, sink, emitter, name, tracing=tracing)

    @property
    def blobs(self) -> Any:
        """The blob store of ``ctx.blobs`` (``blobs.url``), its folder made on first use."""
        store = self.extras.get("blobs")
        if store is None:
            from iii_console.core.blobs import BlobStore

            store = self.extras["blobs"] = BlobStore.from_config(self.config.blobs.url, self.config.data_dir)
        return store

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.close()
        self.sink.close()
        self.client.close()
