"""Redis URLs, including Redis under Sentinel: ``redis+sentinel://[USER:PASS@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``.

Every client the project makes goes through :func:`client_from_url` (and
:func:`async_client_from_url`), so a Sentinel URL works wherever a Redis URL
does. A Sentinel client asks the sentinels for the service's primary on every
new connection (redis-py's ``Sentinel.master_for``): after a failover the
connections to the old primary fail, the callers' own retry loops try again,
and the new connections go to the promoted replica. A failover that leaves the
old primary answering (``SENTINEL FAILOVER``: it stays a primary until the
sentinels demote it, seconds later) fails no connection, so a client in use also
asks the sentinels at most once a second (``PRIMARY_CHECK_S``, with the
connection it is handing out); when the primary changed, its idle connections to
the old one are closed at once and those in use when they are next handed out, instead of
writing on for seconds to a node whose writes are then lost.

The password in the URL is the data nodes' (``requirepass``); sentinels that
need one of their own get it from ``?sentinel_password=``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import SentinelConnectionPool

log = logging.getLogger(__name__)

#: How often a Sentinel client in use asks the sentinels whether its service's primary changed.
PRIMARY_CHECK_S = 1.0

SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel(url: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` URL; ``ValueError`` naming what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if sep else None)
    sentinels: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not host:
            host, port = item, "26379"
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad sentinel port in {item!r} (HOST:PORT)")
        sentinels.append((host.strip("[]"), int(port)))
    if not sentinels:
        raise ValueError("no sentinel in the URL (redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB])")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("no service name in the URL (redis+sentinel://HOST:PORT/SERVICE[/DB])")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path is /SERVICE or /SERVICE/DB, with DB a number")
    query = parse_qs(parts.query)
    extra = set(query) - {"sentinel_password"}
    if extra:
        raise ValueError(f"unknown option {sorted(extra)[0]!r} in the URL's query (only sentinel_password)")
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None,
    )


def _sentinel_kwargs(s: SentinelUrl, kw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: kw[k] for k in ("socket_connect_timeout", "socket_timeout") if k in kw}
    out.setdefault("socket_connect_timeout", 1.0)
    out.setdefault("socket_timeout", 1.0)
    if s.sentinel_password:
        out["password"] = s.sentinel_password
    return out


class _FollowingPool(SentinelConnectionPool):
    """A Sentinel pool that also follows a failover whose old primary still answers (see the module's text)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check_at = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        before = _check_due(self)
        if before is not None:
            try:
                _moved(before, self.get_master_address())  # on a change, it closes the idle connections to the old one
            except redis.RedisError as exc:
                log.debug("sentinels not answering (%s); keeping primary %s", exc, before)
        conn = super().get_connection(*args, **kwargs)
        if _to_old_primary(self, conn):
            conn.disconnect()  # in use at the change: its command connects to the new one
        return conn


def _check_due(pool: Any) -> Any:
    """The primary a Sentinel pool knows, when it is time (``PRIMARY_CHECK_S``) to ask the sentinels again; else
    ``None`` (and before its first connection, which asks them anyway)."""
    now = time.monotonic()
    if now < pool._check_at or pool.master_address is None:
        return None
    pool._check_at = now + PRIMARY_CHECK_S
    return pool.master_address


def _moved(before: Any, after: Any) -> None:
    if after != before:
        log.warning("Redis primary moved from %s to %s; closing the connections to the old one", before, after)


def _to_old_primary(pool: Any, conn: Any) -> bool:
    """Whether ``conn`` (just handed out) is to another primary than the one ``pool`` now knows."""
    return pool.master_address is not None and (conn.host, conn.port) != pool.master_address


def client_from_url(url: str, **kw: Any) -> redis.Redis:
    """``redis.Redis.from_url`` that also takes a Sentinel URL."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kw)
    from redis.sentinel import Sentinel

    s = parse_sentinel(url)
    sentinel = Sentinel(s.sentinels, sentinel_kwargs=_sentinel_kwargs(s, kw), **_node_kwargs(kw))
    return sentinel.master_for(
        s.service, db=s.db, username=s.username, password=s.password, connection_pool_class=_FollowingPool, **kw
    )


def async_client_from_url(url: str, **kw: Any) -> Any:
    """``redis.asyncio`` client of a Redis or Sentinel URL (a blocking pool: callers wait for a connection)."""
    import redis.asyncio as aredis

    if not is_sentinel(url):
        return aredis.Redis.from_pool(aredis.BlockingConnectionPool.from_url(url, **kw))
    from redis.asyncio.sentinel import Sentinel

    s = parse_sentinel(url)
    sentinel = Sentinel(s.sentinels, sentinel_kwargs=_sentinel_kwargs(s, kw), **_node_kwargs(kw))
    return sentinel.master_for(
        s.service, db=s.db, username=s.username, password=s.password, connection_pool_class=_async_pool_class(), **kw
    )


_ASYNC_POOL: Any = None


def _async_pool_class() -> Any:
    """The async Sentinel pool: blocking like the plain URL's (a burst waits up to ``timeout`` for a connection
    instead of failing at ``max_connections``), and following a failover as :class:`_FollowingPool` does."""
    global _ASYNC_POOL
    if _ASYNC_POOL is not None:
        return _ASYNC_POOL
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool

    class AsyncFollowingPool(AsyncSentinelPool, BlockingConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._check_at = 0.0

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            before = _check_due(self)
            if before is not None:
                try:
                    _moved(before, await self.get_master_address())
                except redis.RedisError as exc:
                    log.debug("sentinels not answering (%s); keeping primary %s", exc, before)
            conn = await super().get_connection(*args, **kwargs)
            if _to_old_primary(self, conn):
                await conn.disconnect()
            return conn

    _ASYNC_POOL = AsyncFollowingPool
    return _ASYNC_POOL


def _node_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """What ``Sentinel`` passes to the replicas it may hand out (we only ask it for the primary)."""
    return {k: kw[k] for k in ("socket_connect_timeout", "socket_timeout") if k in kw}


def primary_of(client: Any) -> str | None:
    """``host:port`` of the primary a Sentinel client is using now (None for a plain URL)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "get_master_address"):
        return None
    try:
        host, port = pool.get_master_address()
    except Exception:
        return None
    return f"{host}:{port}"


def sentinel_url_problem(url: str) -> str | None:
    try:
        parse_sentinel(url)
    except ValueError as exc:
        return f"not a valid Sentinel URL: {exc}"
    return None
