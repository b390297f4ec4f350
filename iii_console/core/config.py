"""iii-config.yaml: one typed settings object, loaded with the line of every key.

Sources, highest first: command-line flags (applied by the CLI through
:meth:`Config.with_overrides`), environment (``${VAR:default}`` in the file and
``REDIS_URL``), the file, the defaults here. Unknown keys and bad values raise
:class:`ConfigError` naming the file, line and dotted key.

One module because it is one schema: the section models, the loader that maps every
pydantic error back to its file line, and the URL checks all describe ``iii-config.yaml``
(``with_overrides`` and the defaults of every key are read together with them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from iii_console.core.errors import ConfigError
from iii_console.core.redact import DEFAULT_WORDS, redact_url, words

if TYPE_CHECKING:  # PyYAML is imported where a file is read: a worker gets its configuration as JSON
    import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``port: true`` is no port: YAML's booleans are refused where a number is wanted (pydantic would take
        ``true`` as 1). A field that takes a boolean too (none of ours mixes them) is left alone."""
        field = cls.model_fields.get(info.field_name or "") if isinstance(value, bool) else None
        if field is not None:
            kinds = set(get_args(field.annotation)) or {field.annotation}
            if kinds & {int, float} and bool not in kinds:
                raise ValueError(f"a number is needed here, not {str(value).lower()}")
        return value


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` listens on this machine's loopback only: ``localhost``, or a loopback
    address (127.0.0.0/8, ::1). A name is not read by its look: ``127.example.com`` may point anywhere."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Redis URL, or ``None``.

    Checked when the configuration is built, so a typo is one clear error naming
    where the URL came from, not a stack trace from the first connection.
    """
    if not url:
        return None
    from urllib.parse import urlsplit

    from redis.connection import parse_url

    from iii_console.core.redis_url import is_sentinel, sentinel_url_problem

    if is_sentinel(url):
        return sentinel_url_problem(url)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        # The value itself is not repeated: it may have come from an environment variable holding a secret.
        got = f"the scheme {parts.scheme + '://'!r}" if parts.scheme and parts.scheme.isalnum() else "no scheme"
        return f"not a Redis URL: it has {got}; a Redis URL starts with redis://, rediss:// or unix:// (redis+sentinel:// under Sentinel)"
    try:
        parse_url(url)
    except ValueError as exc:
        return f"not a valid Redis URL: {exc}"
    from redis import ConnectionPool

    try:  # builds a connection object from the query's options (connects to nothing)
        ConnectionPool.from_url(url).make_connection()
    except TypeError as exc:
        m = re.search(r"argument '([^']*)'", str(exc))
        name = m.group(1) if m else "?"
        hint = " (TLS options need a rediss:// URL)" if name.startswith("ssl") and parts.scheme != "rediss" else ""
        return f"unknown option {name!r} in the URL's query{hint}"
    except ValueError as exc:
        return f"not a valid Redis URL: {exc}"
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path (unix:///path/to/redis.sock)"
    if not parts.hostname:
        return "the URL has no host (redis://HOST:PORT/DB)"
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"the database in the URL must be a number, not {db!r}"
    return None


class RedisConfig(_Section):
    url: str = ""
    """Redis URL (redis://, rediss://, unix://). Empty: start an embedded Redis under .iii/."""
    prefix: str = Field(default="iii:", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    """Prefix of every key iii-console writes, so several projects can share one Redis."""
    maxmemory: str = Field(default="1gb", pattern=r"^(?i:[1-9][0-9]*(b|kb|mb|gb)?)$")
    """Memory the embedded Redis may use (``512mb``, ``2gb``). When full it refuses writes (HTTP steps
    answer 503) rather than evicting queue data. Not applied to a Redis given by URL."""
    appendfsync: Literal["everysec", "always", "no"] = "everysec"
    """Embedded Redis only: when its append-only file is fsynced. ``everysec`` can lose up to
    about a second of acknowledged writes if the machine (not just Redis) crashes; ``always``
    loses none, at the cost of one fsync per write."""
    wait_replicas: int | None = Field(default=None, ge=0, le=16)
    """Replicas that must acknowledge (Redis ``WAIT``) the writes a failover must not lose: cron
    once-keys, dead-letter replays, state changes, once-keys of state triggers and fan-in groups,
    RabbitMQ run-keys. Unset: 1 on a ``redis+sentinel://`` URL, else 0 (off). A write fewer replicas
    acknowledged within ``wait_timeout_ms`` stands, with a warning (on a Redis without replicas, such as
    the embedded one, every such write would wait out the timeout)."""
    wait_timeout_ms: int = Field(default=100, ge=1, le=2_000)
    """How long one ``WAIT`` waits for ``wait_replicas`` replicas, in milliseconds (at most 2 s: below
    every client's socket timeout, so a slow replica never reads as a lost connection)."""

    @property
    def effective_wait_replicas(self) -> int:
        """``wait_replicas``, or its default: 1 under Sentinel, 0 otherwise."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        from iii_console.core.redis_url import is_sentinel

        return 1 if is_sentinel(self.url) else 0

    @field_validator("url")
    @classmethod
    def _valid_url(cls, v: str) -> str:
        problem = redis_url_problem(v.strip())
        if problem:
            raise ValueError(problem)
        return v.strip()


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=3111, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Request bodies above this answer 413 before they are read in full."""
    metrics_path: str = Field(default="/metrics", pattern=r"^(/[A-Za-z0-9_./-]*)?$")
    """Prometheus metrics for the whole deployment; empty turns it off."""
    health_path: str = Field(default="/health", pattern=r"^(/[A-Za-z0-9_./-]*)?$")
    """Redis reachability and worker heartbeats as JSON (503 if Redis is down); empty turns it off."""
    openapi_path: str = Field(default="/openapi.json", pattern=r"^(/[A-Za-z0-9_./-]*)?$")
    """OpenAPI document of the HTTP steps; empty turns it off."""
    auth_token: str = ""
    """When set, every request except the health check needs ``Authorization: Bearer <token>``.
    Required to listen on anything but loopback."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host header values accepted (DNS-rebinding guard). Empty: loopback names when bound to
    loopback, any host otherwise (where the auth token guards instead)."""
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    """A connection whose request headers are not complete this many seconds after it opened (or
    after the request's first byte) is closed: slow senders cannot hold connections for good."""
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    """A request whose body is not complete this many seconds after its headers is dropped."""
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    """Connections and requests in progress at once; past this the server answers 503."""
    max_queue_depth: int = Field(default=100_000, ge=0)
    """Back-pressure: HTTP steps answer 429 while a topic they enqueue to has more waiting
    messages than this (0 turns it off), so a flood cannot grow Redis without bound."""

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def hosts(self) -> list[str]:
        if self.allowed_hosts:
            return self.allowed_hosts
        return ["127.0.0.1", "localhost", "[::1]", "::1"] if self.loopback else ["*"]


class ThrottleConfig(_Section):
    key: str = Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$", max_length=200)
    """Dotted path into the message data (``customer.id``) whose value names the throttled key."""
    limit: int | None = Field(default=None, ge=1, le=1_000_000)
    """At most this many handler starts per key in any ``period_ms`` window, cluster-wide."""
    period_ms: int | None = Field(default=None, ge=1, le=86_400_000)

    @model_validator(mode="after")
    def _both(self) -> ThrottleConfig:
        if (self.limit is None) != (self.period_ms is None):
            raise ValueError("limit and period_ms go together")
        return self


class QueueConfig(_Section):
    max_retries: int = Field(default=3, ge=0, le=1000)
    """Retries after the first attempt; ``max_retries + 1`` attempts in all."""
    retry_delay: int = Field(default=1000, ge=0, le=86_400_000)
    """Milliseconds before the first retry."""
    backoff: Literal["exponential", "fixed"] = "exponential"
    """``exponential`` doubles the delay on each retry (capped by ``max_retry_delay``)."""
    max_retry_delay: int = Field(default=3_600_000, ge=0, le=7 * 86_400_000)
    concurrency: int = Field(default=10, ge=1, le=1000)
    """Handlers of this queue that may run at once in one worker process."""
    dead_letter_queue: str = Field(default="dead-letters", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    max_deliveries: int = Field(default=10, ge=1, le=10_000)
    """A message handed to workers this many times without being settled (it killed or hung
    them) goes to the dead-letter queue without running again."""
    priority: Literal["high", "normal", "low"] = "normal"
    """Default priority of messages enqueued to this topic without an explicit one."""
    time_limit_ms: int = Field(default=600_000, ge=0, le=7 * 86_400_000)
    """Hard limit of one run of a handler (0 = none). Past it the handler gets
    ``TimeLimitExceeded`` and the attempt fails (then the retry strategy); a handler that does
    not stop within a grace has its worker process recycled and the message redelivered."""
    soft_time_limit_ms: int = Field(default=0, ge=0, le=7 * 86_400_000)
    """Optional earlier limit (0 = none): ``SoftTimeLimitExceeded`` is raised inside the handler,
    which may catch it to clean up; below ``time_limit_ms``."""

    max_payload_bytes: int = Field(default=262_144, ge=1024, le=512 * 1_048_576)
    """Largest encoded message accepted by an enqueue to this topic; larger data is refused
    (``PayloadTooLarge``): put it in ``ctx.blobs`` and enqueue the ref."""
    dead_letter_ttl: int | None = Field(default=None, ge=1000, le=366 * 86_400_000)
    """Milliseconds a dead letter of this topic is kept after its last failure; unset: until purged or replayed."""
    throttle: ThrottleConfig | None = None
    """Per-key rate limit across every worker process; an over-limit message waits (re-delayed) without spending an attempt."""
    concurrency_per_key: int | None = Field(default=None, ge=1, le=10_000)
    """Handlers running at once per ``throttle.key`` value, across every worker process."""

    @model_validator(mode="after")
    def _soft_below_hard(self) -> QueueConfig:
        if self.soft_time_limit_ms and self.time_limit_ms and self.soft_time_limit_ms >= self.time_limit_ms:
            raise ValueError(f"soft_time_limit_ms ({self.soft_time_limit_ms}) must be below time_limit_ms ({self.time_limit_ms})")
        return self

    @model_validator(mode="after")
    def _per_key(self) -> QueueConfig:
        if self.concurrency_per_key is not None and self.throttle is None:
            raise ValueError("concurrency_per_key needs throttle.key: the path to the key in the message data")
        return self

    def delay_for(self, retry: int) -> int:
        """Delay in ms before retry number ``retry`` (1-based)."""
        if self.backoff == "fixed":
            return self.retry_delay
        return min(self.retry_delay * (2 ** (retry - 1)), self.max_retry_delay)


class EventsConfig(_Section):
    maxlen: int = Field(default=100_000, ge=100)
    """The event stream is capped near this many entries (XADD MAXLEN ~)."""
    echo: bool = True
    """With --no-ui, also print each event as one JSON line on stdout."""
    enabled: bool = True
    """Write lifecycle events to the stream. ``false`` makes every emit a no-op (for benchmarks)."""
    redact: list[str] = Field(default_factory=lambda: list(DEFAULT_WORDS))
    """Names whose values events never show: a name matches when one of these is a whole word of it
    (``privateKey`` matches ``private_key``, ``secretary`` does not match ``secret``)."""

    @field_validator("redact")
    @classmethod
    def _words(cls, v: list[str]) -> list[str]:
        bad = [w for w in v if not words(w)]
        if bad:
            raise ValueError(f"{bad[0]!r} has no letters or digits to match")
        return v


class BlobsConfig(_Section):
    url: str = ""
    """Where ``ctx.blobs`` keeps blobs: empty = the project's ``.iii/blobs/``; ``file:///path`` =
    a folder every host mounts (NFS, EFS, SMB), for workers on several hosts."""

    @field_validator("url")
    @classmethod
    def _valid_url(cls, v: str) -> str:
        from iii_console.core.blobs import BlobError, store_root

        try:
            store_root(v.strip(), Path("."))
        except BlobError as exc:
            raise ValueError(str(exc)) from None
        return v.strip()


class TelemetryConfig(_Section):
    otlp_endpoint: str = ""
    """Base URL of an OpenTelemetry collector speaking OTLP/HTTP (``http://localhost:4318``): spans of
    HTTP requests and message runs go to ``{otlp_endpoint}/v1/traces``. Empty: no tracing, unless
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, which wins over this.
    Needs the ``otel`` extra (``pip install 'iii-console[otel]'``)."""
    service_name: str = Field(default="", max_length=200)
    """``service.name`` of the spans (default ``iii-console``); ``OTEL_SERVICE_NAME`` wins over this."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        v = v.strip()
        if v and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
            raise ValueError("an OTLP/HTTP endpoint is an http:// or https:// URL with a host (http://localhost:4318)")
        return v.rstrip("/")


class WorkersConfig(_Section):
    processes: int = Field(default=1, ge=1, le=256)
    threads: int = Field(default=8, ge=1, le=1000)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    """Seconds between worker heartbeats."""
    heartbeat_timeout: float = Field(default=15.0, gt=0)
    """A worker silent this long is dead; its in-flight messages are redelivered."""
    sweep_interval: float = Field(default=2.0, gt=0)
    """Seconds between sweeps for dead workers' messages and unfinished state triggers."""
    shutdown_timeout: float = Field(default=30.0, gt=0)
    """Seconds SIGTERM waits for in-flight handlers before requeueing them."""
    max_messages_per_process: int = Field(default=0, ge=0)
    """Replace a worker process after it has settled this many messages (0 = never)."""
    max_memory_mb: int = Field(default=0, ge=0)
    """Replace a worker process once its resident memory (RSS) exceeds this many MiB (0 = never)."""


class RabbitmqConfig(_Section):
    url: str = ""
    """AMQP URL of a RabbitMQ node (amqp://user:pass@host:5672/vhost); used when ``broker: rabbitmq``.
    Several nodes of one cluster: separate their URLs with ``;`` (tried in turn on every new connection,
    so a client whose node dies reconnects to the next one up)."""
    prefix: str = Field(default="iii", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Start of every exchange and queue name this project declares, so projects can share a vhost."""

    @field_validator("url")
    @classmethod
    def _valid_url(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(";") if p.strip()]
        for n, part in enumerate(parts, 1):
            where = f" (node {n} of {len(parts)})" if len(parts) > 1 else ""
            if not part.startswith(("amqp://", "amqps://")):
                raise ValueError(f"not an AMQP URL{where}: {redact_url(part)!r}; it starts with amqp:// or amqps://")
            problem = _amqp_url_problem(part)
            if problem:
                raise ValueError(f"{problem}{where}: {redact_url(part)!r}")
        return ";".join(parts)


#: The query options of an AMQP URL that pika (the RabbitMQ client) takes, and the type of each value: any
#: other is refused by the client at the first connection (``Unknown URL parameter``), so it is refused here.
AMQP_URL_OPTIONS: dict[str, type] = {
    "blocked_connection_timeout": float,
    "channel_max": int,
    "client_properties": str,
    "connection_attempts": int,
    "frame_max": int,
    "heartbeat": int,
    "locale": str,
    "retry_delay": float,
    "socket_timeout": float,
    "stack_timeout": float,
    "ssl_options": str,
    "tcp_options": str,
}


def _amqp_url_problem(url: str) -> str | None:
    """What the RabbitMQ client would refuse in ``url`` at its first connection (a port that is not a number,
    an option it does not know or a value of the wrong type), or ``None``."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a port that is not a number from 0 to 65535)
    except ValueError as exc:
        return f"not a valid AMQP URL ({exc})"
    if not parts.hostname:
        return "not a valid AMQP URL (no host)"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = AMQP_URL_OPTIONS.get(name)
        if kind is None:
            return f"unknown AMQP URL option {name!r} (known: {', '.join(AMQP_URL_OPTIONS)})"
        if kind is not str:
            try:
                kind(value)
            except ValueError:
                return f"AMQP URL option {name}={value!r} is not {'a whole number' if kind is int else 'a number'}"
    return None


class Config(_Section):
    broker: Literal["redis", "rabbitmq"] = "redis"
    """Where queue messages live: ``redis`` (the default) or ``rabbitmq`` (quorum queues, ``rabbitmq.url``).
    Redis is still used for state, events, metrics, cron once-keys and the dead-letter store."""
    redis: RedisConfig = RedisConfig()
    rabbitmq: RabbitmqConfig = RabbitmqConfig()
    server: ServerConfig = ServerConfig()
    queues: dict[str, QueueConfig] = Field(default_factory=dict)
    events: EventsConfig = EventsConfig()
    workers: WorkersConfig = WorkersConfig()
    blobs: BlobsConfig = BlobsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    steps_dir: str = "steps"
    project_dir: str = "."
    source: str = ""
    """The file this came from, for messages; empty when built from defaults."""
    _queue_cache: dict[str, QueueConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _merged_strategies_valid(self) -> Config:
        """A topic's entry is merged with ``default``; the merge must be valid too (a soft limit
        inherited from ``default`` above the topic's own hard limit)."""
        for topic in self.queues:
            try:
                self.queue(topic)
            except ValidationError as exc:
                raise ValueError(
                    f"queues.{topic}, with what it inherits from queues.default: {_message(exc.errors()[0])}"
                ) from None
        return self

    @model_validator(mode="after")
    def _broker_reachable(self) -> Config:
        if self.broker == "rabbitmq" and not self.rabbitmq.url:
            raise ValueError("broker: rabbitmq needs rabbitmq.url (or RABBITMQ_URL): amqp://HOST:5672/VHOST")
        return self

    def queue(self, topic: str) -> QueueConfig:
        """Strategy for ``topic``: its own entry, keys it leaves out taken from ``default``.

        Asked for on every message a worker fetches and settles, so each topic's
        merged strategy is built once (the config is frozen).
        """
        # The private attribute read from pydantic's store directly: ``self._queue_cache`` goes
        # through ``BaseModel.__getattr__``, ~1.5 µs a read, more than the rest of this call.
        cache: dict[str, QueueConfig] = self.__pydantic_private__["_queue_cache"]  # type: ignore[index]
        got = cache.get(topic)
        if got is None:
            default = self.queues.get("default", QueueConfig())
            own = self.queues.get(topic)
            got = default if own is None else QueueConfig(**{**default.model_dump(), **own.model_dump(exclude_unset=True)})
            if len(cache) < 10_000:
                cache[topic] = got
        return got

    def dead_letter_ttls(self) -> tuple[Any, int | None]:
        """``(topic -> its dead_letter_ttl or None, the shortest one configured or None)``."""
        ttls = [q.dead_letter_ttl for q in self.queues.values() if q.dead_letter_ttl is not None]
        return (lambda topic: self.queue(topic).dead_letter_ttl), (min(ttls) if ttls else None)

    @property
    def dead_letter_queues(self) -> list[str]:
        return sorted({self.queue(t).dead_letter_queue for t in self.queues} | {self.queue("default").dead_letter_queue})

    @property
    def steps_path(self) -> Path:
        return (Path(self.project_dir) / self.steps_dir).resolve()

    @property
    def data_dir(self) -> Path:
        return (Path(self.project_dir) / ".iii").resolve()

    def with_overrides(self, **values: Any) -> Config:
        """Apply command-line values given as dotted keys (``redis.url``); ``None`` means unset."""
        # exclude_unset: a per-topic queue entry must keep inheriting from ``default``.
        data = self.model_dump(exclude_unset=True)
        for dotted, v in values.items():
            if v is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
        try:
            return Config(**data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(_message(err), key=".".join(str(x) for x in err["loc"])) from None


def _interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is None:
            raise KeyError(name)
        return default

    return _VAR.sub(sub, text)


def _lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each dotted key path to the 1-based line it appears on."""
    import yaml

    out: dict[tuple[Any, ...], int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = (*path, k.value)
            out[key] = k.start_mark.line + 1
            out.update({p: ln for p, ln in _lines(v, key).items() if p != key})
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_lines(v, (*path, i)))
    return out


#: Most YAML nodes a configuration may expand to, aliases included. A real file has a few
#: hundred; nested aliases ("billion laughs") expand a few lines into billions.
MAX_NODES = 20_000


def _check_expansion(root: yaml.Node, fname: str) -> None:
    """Refuse a document whose aliases expand beyond :data:`MAX_NODES` (counted without expanding it)."""
    import yaml

    seen = 0
    stack = [root]
    while stack:
        n = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(
                f"the file expands to more than {MAX_NODES:,} values through its aliases (*name); write the values out",
                file=fname,
                line=n.start_mark.line + 1,
            )
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack += (k, v)
        elif isinstance(n, yaml.SequenceNode):
            stack += n.value


_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables of a ``.env`` file (``KEY=value``, ``export KEY=value``, quotes, ``#`` comments),
    as Motia and python-dotenv read it; a line that is none of these is a :class:`ConfigError`."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _DOTENV_LINE.match(line)
        if m is None:
            raise ConfigError("expected KEY=value", file=str(path), line=n)
        key, value = m.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def load_dotenv(project_dir: Path, environ: Any = None) -> dict[str, str]:
    """Put the project's ``.env`` variables into the environment, under variables already set
    (the environment wins); returns those it set. Steps and worker processes see them."""
    environ = os.environ if environ is None else environ
    dotenv = project_dir / ".env"
    if not dotenv.is_file():
        return {}
    added = {k: v for k, v in read_dotenv(dotenv).items() if k not in environ}
    environ.update(added)
    return added


def load_config(path: str | os.PathLike[str] | None = None, *, env: dict[str, str] | None = None) -> Config:
    """Load ``path`` (default ``./iii-config.yaml``; absent file = all defaults)."""
    env = dict(os.environ if env is None else env)
    explicit = path is not None
    p = Path(path) if path is not None else Path("iii-config.yaml")
    if not p.exists():
        if explicit:
            raise ConfigError("file not found", file=str(p))
        _check_env_url(env)
        from_env = {"redis": {"url": env["REDIS_URL"]}} if env.get("REDIS_URL") else {}
        return Config(**from_env, project_dir=str(Path.cwd()))
    fname = str(p)
    import yaml

    try:
        raw_text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=fname) from None

    try:
        node = yaml.compose(raw_text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"invalid YAML: {getattr(exc, 'problem', exc)}", file=fname, line=mark.line + 1 if mark else None
        ) from None
    if node is not None:
        _check_expansion(node, fname)
    lines = _lines(node) if node is not None else {}

    # Interpolate per scalar so an error can name the key it came from.
    def walk(n: yaml.Node, path: tuple[Any, ...]) -> Any:
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                if k.value in out:
                    raise ConfigError(
                        "duplicate key", file=fname, line=k.start_mark.line + 1, key=".".join(map(str, (*path, k.value)))
                    )
                out[k.value] = walk(v, (*path, k.value))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(v, (*path, i)) for i, v in enumerate(n.value)]
        if n.tag == "tag:yaml.org,2002:str" and "${" in n.value:
            try:
                text = _interpolate(n.value, env)
            except KeyError as missing:
                raise ConfigError(
                    f"environment variable {missing.args[0]} is not set and has no default",
                    file=fname,
                    line=n.start_mark.line + 1,
                    key=".".join(map(str, path)),
                ) from None
            # Kept a string (pydantic converts "3111" for int fields): re-parsing it as YAML
            # turned "iii:" into a mapping and "[::1]" into a list, or raised outside ConfigError.
            return text if text.strip() else ""
        return yaml.SafeLoader(raw_text).construct_object(n, deep=True) if n.tag != "tag:yaml.org,2002:str" else n.value

    try:
        data = walk(node, ()) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"invalid YAML: {getattr(exc, 'problem', None) or exc}", file=fname, line=mark.line + 1 if mark else None
        ) from None
    if data is None or data == "":
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", file=fname, line=1)
    if env.get("REDIS_URL"):  # the environment over the file: the same file serves dev and each deployment
        _check_env_url(env)
        data.setdefault("redis", {})
        if isinstance(data["redis"], dict):
            data["redis"]["url"] = env["REDIS_URL"]
    if env.get("RABBITMQ_URL"):  # likewise; checked here so a `broker: rabbitmq` file without a url is valid
        _check_env_amqp(env["RABBITMQ_URL"])
        data.setdefault("rabbitmq", {})
        if isinstance(data["rabbitmq"], dict):
            data["rabbitmq"]["url"] = env["RABBITMQ_URL"]
    try:
        return Config(**data, project_dir=str(p.resolve().parent), source=fname)
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            loc = tuple(x for x in err["loc"])
            key = ".".join(str(x) for x in loc)
            line = None
            for n in range(len(loc), -1, -1):
                if loc[:n] in lines:
                    line = lines[loc[:n]]
                    break
            found.append(ConfigError(_message(err), file=fname, line=line, key=key))
        first = found[0]
        first.more = found[1:]  # `config check` lists them all; a start names the first
        raise first from None


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _check_env_amqp(url: str) -> None:
    try:
        RabbitmqConfig(url=url)
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0]), key="RABBITMQ_URL (environment)") from None


def _check_env_url(env: dict[str, str]) -> None:
    problem = redis_url_problem(env.get("REDIS_URL", "").strip())
    if problem:
        raise ConfigError(problem, key="REDIS_URL (environment)")
