"""Redis clients that fail fast, and the check a command makes before it talks to Redis.

In the core so every client of a running deployment (the console, ``attach``,
``tail``, ``dlq``, ``state``) gets the same client without loading the runtime,
and so without Litestar, uvicorn or Dramatiq.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from iii_console.core.config import redact_url
from iii_console.core.errors import RedisUnavailable
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
    # A worker's blocking reads (its wake hub's BLPOP, the promoter's) and every handler and
    # consumer thread take connections of this pool: redis-py 8 caps a pool at 100 by default
    # ("Too many connections" past ~25 subscriptions crashed the worker at start, when each
    # queue's consumer blocked on its own); the need is bounded by the steps and threads.
    kw.setdefault("max_connections", 10_000)
    return client_from_url(url, **kw)


def check_redis(url: str) -> None:
    """Ping ``url`` once; a :class:`RedisUnavailable` that says what to fix if it does not answer."""
    c = redis_client(url, socket_timeout=3)
    try:
        c.ping()
    except redis.AuthenticationError as exc:
        from urllib.parse import urlsplit

        if not urlsplit(url).password:
            raise RedisUnavailable(
                f"Redis at {redact_url(url)} needs a password: put it in the URL "
                "(redis://:PASSWORD@host:port/0, or redis://USER:PASSWORD@... for an ACL user)"
            ) from None
        raise RedisUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    finally:
        c.close()
