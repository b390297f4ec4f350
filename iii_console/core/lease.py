"""``ctx.lock(name, ttl_ms)``: a lease in Redis, with a fencing token.

A lease is held until ``release`` or until ``ttl_ms`` passes (Redis's clock):
a holder that stalls past it loses it, and another may take it. Each
acquisition gets a token larger than every earlier one for that name, so the
work it guards can refuse a late holder: ``lease.fence(resource)`` succeeds
only for the newest token that has touched ``resource``, and only while no
newer lease of its name was taken (``LockLost`` otherwise), and ``check``/``extend``/``release`` act only while the lock is
still this token's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from iii_console.core.errors import IIIError
from iii_console.core.keys import Keys

_SCRIPT = resources.files("iii_console.core").joinpath("lua/lease.lua").read_text()
_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")


class LockTaken(IIIError):
    """Someone else holds the lease."""


class LockLost(IIIError):
    """The lease expired (or was taken over); the guarded work must not go on."""


def _check(name: Any, ttl_ms: Any) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"lock name must be 1 to 200 of A-Z a-z 0-9 _ . : / -, not {name!r}")
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not 1 <= ttl_ms <= 86_400_000:
        raise ValueError(f"ttl_ms must be a whole number of milliseconds from 1 to 86400000, not {ttl_ms!r}")


def _fenced_out(name: str, token: int, resource: str) -> str:
    return (
        f"lock {name!r} token {token} is older than the last writer of {resource!r} or than a later holder "
        "of the lock (it expired and was taken over); write refused"
    )


@dataclass
class Lease:
    """A held lease (sync). Use as a context manager to release it at the end."""

    name: str
    token: int
    _script: Any
    _keys: Keys

    def _run(self, *args: Any) -> int:
        return int(self._script(args=list(args)))

    def check(self) -> None:
        """Raise ``LockLost`` if the lease is no longer held under this token."""
        if not self._run("held", self._keys.lock(self.name), self.token):
            raise LockLost(f"lock {self.name!r} (token {self.token}) was lost: it expired or was taken over")

    def extend(self, ttl_ms: int) -> None:
        _check(self.name, ttl_ms)
        if not self._run("extend", self._keys.lock(self.name), self.token, ttl_ms):
            raise LockLost(f"lock {self.name!r} (token {self.token}) cannot be extended: it expired or was taken over")

    def fence(self, resource: str) -> None:
        """Record this token as the newest to touch ``resource``; ``LockLost`` if a newer token already has, or a
        newer lease of this name was taken since (this one expired and was taken over)."""
        _check(resource, 1)
        if not self._run("fence", self._keys.fence(resource), self.token, self._keys.lock_tokens(self.name)):
            raise LockLost(_fenced_out(self.name, self.token, resource))

    def release(self) -> bool:
        """Give the lease up; False if it had already expired (a successor's lock is never deleted)."""
        return bool(self._run("release", self._keys.lock(self.name), self.token))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@dataclass
class AsyncLease:
    """The same for ``async def`` handlers (``async with``, ``await lease.fence(...)``)."""

    name: str
    token: int
    _script: Any
    _keys: Keys

    async def _run(self, *args: Any) -> int:
        return int(await self._script(args=list(args)))

    async def check(self) -> None:
        if not await self._run("held", self._keys.lock(self.name), self.token):
            raise LockLost(f"lock {self.name!r} (token {self.token}) was lost: it expired or was taken over")

    async def extend(self, ttl_ms: int) -> None:
        _check(self.name, ttl_ms)
        if not await self._run("extend", self._keys.lock(self.name), self.token, ttl_ms):
            raise LockLost(f"lock {self.name!r} (token {self.token}) cannot be extended: it expired or was taken over")

    async def fence(self, resource: str) -> None:
        _check(resource, 1)
        if not await self._run("fence", self._keys.fence(resource), self.token, self._keys.lock_tokens(self.name)):
            raise LockLost(_fenced_out(self.name, self.token, resource))

    async def release(self) -> bool:
        return bool(await self._run("release", self._keys.lock(self.name), self.token))

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class Leases:
    def __init__(self, client: Any, keys: Keys):
        self._script = client.register_script(_SCRIPT)
        self._keys = keys

    def acquire(self, name: str, ttl_ms: int) -> Lease:
        _check(name, ttl_ms)
        token = int(self._script(args=["acquire", self._keys.lock(name), self._keys.lock_tokens(name), ttl_ms]))
        if not token:
            raise LockTaken(f"lock {name!r} is held by someone else")
        return Lease(name, token, self._script, self._keys)


class AsyncLeases(Leases):
    async def acquire(self, name: str, ttl_ms: int) -> AsyncLease:  # type: ignore[override]
        _check(name, ttl_ms)
        token = int(await self._script(args=["acquire", self._keys.lock(name), self._keys.lock_tokens(name), ttl_ms]))
        if not token:
            raise LockTaken(f"lock {name!r} is held by someone else")
        return AsyncLease(name, token, self._script, self._keys)
