"""The per-process bundle of clients every role needs: Redis, keys, event sink, emitter.

In the core because the command-line clients (``dlq replay``, ``cron run``) open one
too, and they must not load the runtime's server and queue libraries to do it.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from iii_console.core import replication
from iii_console.core.config import Config
from iii_console.core.connection import redis_client
from iii_console.core.emitter import Emitter, StreamSink, null_emitter
from iii_console.core.events import set_redaction
from iii_console.core.keys import Keys


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
    #: Span export (``adapters/telemetry``) when this process traces, else ``None``;
    #: set by ``runtime.services.open_services``.
    tracing: Any = None

    @classmethod
    def open(cls, config: Config, role: str) -> Services:
        set_redaction(config.events.redact)
        client = redis_client(config.redis.url)
        keys = Keys(config.redis.prefix)
        sink = StreamSink(client, keys.events, maxlen=config.events.maxlen, keys=keys)
        name = process_name(role)
        emitter = Emitter(sink, worker=name, trace_id=uuid.uuid4().hex) if config.events.enabled else null_emitter()
        replication.configure(replication.from_config(config.redis, replication.emitter_report(emitter)))
        return cls(config, role, client, keys, sink, emitter, name)

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
