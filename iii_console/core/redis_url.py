"""Redis URLs, including Redis under Sentinel: ``redis+sentinel://[USER:PASS@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``.

Every client the project makes goes through :func:`client_from_url` (and
:func:`async_client_from_url`), so a Sentinel URL works wherever a Redis URL
does. A Sentinel client asks the sentinels for the service's primary on every
new connection (redis-py's ``Sentinel.master_for``): after a failover the
connections to the old primary fail, the callers' own retry loops try again,
and the new connections go to the promoted replica.

The password in the URL is the data nodes' (``requirepass``); sentinels that
need one of their own get it from ``?sentinel_password=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis

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


def client_from_url(url: str, **kw: Any) -> redis.Redis:
    """``redis.Redis.from_url`` that also takes a Sentinel URL."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kw)
    from redis.sentinel import Sentinel

    s = parse_sentinel(url)
    sentinel = Sentinel(s.sentinels, sentinel_kwargs=_sentinel_kwargs(s, kw), **_node_kwargs(kw))
    return sentinel.master_for(s.service, db=s.db, username=s.username, password=s.password, **kw)


def async_client_from_url(url: str, **kw: Any) -> Any:
    """``redis.asyncio`` client of a Redis or Sentinel URL (a blocking pool: callers wait for a connection)."""
    import redis.asyncio as aredis

    if not is_sentinel(url):
        return aredis.Redis.from_pool(aredis.BlockingConnectionPool.from_url(url, **kw))
    from redis.asyncio.sentinel import Sentinel

    s = parse_sentinel(url)
    kw.pop("timeout", None)  # BlockingConnectionPool's wait; the Sentinel pool does not block
    sentinel = Sentinel(s.sentinels, sentinel_kwargs=_sentinel_kwargs(s, kw), **_node_kwargs(kw))
    return sentinel.master_for(s.service, db=s.db, username=s.username, password=s.password, **kw)


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
