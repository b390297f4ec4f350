"""The project's embedded Redis: started when no URL is configured, shared by
every iii-console process of the project through ``.iii/redis.json``.

Who owns it, and so stops it, is decided under a lock on ``.iii/redis.lock``,
so two ``iii-console`` started at once never start two servers on one
append-only file. The server itself holds a second lock (``.iii/redis/owner.lock``,
inherited) for as long as it runs: whether a redis-server still uses the data
directory is then a question the kernel answers, whatever ``redis.json`` says.

The owner's death takes the server with it (on Linux, by a parent-death
signal). Where that does not hold, or the server outlived its owner anyway, the
next runtime to start adopts it and stops it when it exits.

The server requires a random password (kept in ``redis.json``, readable only by
its owner), because anyone on the machine can connect to a loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from iii_console.core.errors import IIIError
from iii_console.core.redis_server import RedisServer, hardening

try:
    import fcntl
except ImportError:  # Windows: no flock; the redis.json checks alone
    fcntl = None  # type: ignore[assignment]


def _info_path(data_dir: Path) -> Path:
    return data_dir / "redis.json"


def _read_info(data_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads(_info_path(data_dir).read_text())
        return info if isinstance(info, dict) and isinstance(info.get("url"), str) else {}
    except (OSError, ValueError):
        return {}


def _write_info(data_dir: Path, info: dict[str, Any]) -> None:
    """Replace ``redis.json`` atomically, readable by this user only (it holds the password)."""
    tmp = _info_path(data_dir).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, _info_path(data_dir))


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)


def _answers(url: str) -> bool:
    c = _client(url)
    try:
        return bool(c.ping())
    except redis.RedisError:
        return False
    finally:
        c.close()


def running_url(data_dir: Path) -> str | None:
    """URL of this project's embedded Redis if one is up (started by another process)."""
    url = _read_info(data_dir).get("url")
    return str(url) if url and _answers(url) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[Any]:
    """An exclusive flock on ``path``; yields the open file, or ``None`` if not ``blocking`` and held."""
    fh = open(path, "a")  # noqa: SIM115  (closed below, or by the caller once the lock is given up)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                fh.close()
                yield None
                return
        yield fh
    finally:
        fh.close()


class EmbeddedRedis:
    """Start a private Redis (AOF on, loopback only, password) unless the project already has one."""

    def __init__(self, data_dir: Path, *, maxmemory: str = "1gb", binary: str | None = None, appendfsync: str = "everysec"):
        self.data_dir = data_dir
        self.maxmemory = maxmemory
        self.binary = binary
        #: ``redis.appendfsync``: when the append-only file is fsynced (everysec, always, no).
        self.appendfsync = appendfsync
        self.server: RedisServer | None = None
        #: pid of a server this process adopted from a dead owner (not its child).
        self.adopted_pid: int | None = None
        self.url = ""

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    def start(self) -> str:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.data_dir, self.redis_dir):
            try:
                os.chmod(d, 0o700)  # the append-only file holds the project's data
            except OSError:
                pass
        with _flock(self.data_dir / "redis.lock"):
            return self._start_locked()

    def _start_locked(self) -> str:
        info = _read_info(self.data_dir)
        if info.get("url") and _answers(info["url"]):
            return self._join_or_adopt(info)
        with _flock(self.redis_dir / "owner.lock", blocking=False) as free:
            if free is not None:
                # No redis-server uses the directory: start ours, and hand it the lock.
                self.server = self._launch(free, port=None, password=secrets.token_hex(24))
                self.url = self.server.url
                _write_info(self.data_dir, {"url": self.url, "pid": os.getpid(), "redis_pid": self.server.proc.pid})  # type: ignore[union-attr]
                return self.url
        # A redis-server holds the directory but is not the one redis.json names, or hangs:
        # a second server on the same append-only file would corrupt it.
        where = f" (pid {info['redis_pid']})" if isinstance(info.get("redis_pid"), int) else ""
        said = "names no server that answers" if info else "is missing"
        raise IIIError(
            f"a redis-server{where} still uses {self.redis_dir} (it holds owner.lock there) but "
            f"{_info_path(self.data_dir)} {said}; stop that redis-server, or pass --redis URL"
        )

    def _launch(self, lock: Any, *, port: int | None, password: str) -> RedisServer:
        """Start redis-server on the data directory, handing it the owner lock ``lock``."""
        return RedisServer(
            self.redis_dir,
            port=port,
            appendonly=True,
            password=password,
            die_with_parent=True,
            pass_fds=(lock.fileno(),) if fcntl is not None else (),
            binary=self.binary,
            maxmemory=self.maxmemory,
            extra=["--appendfsync", self.appendfsync],
        ).start()

    # -- supervision (runtime/redis_watchdog.py) ------------------------------
    def exited(self) -> str | None:
        """``None`` while the server this process owns runs; once it has exited, how (reaping it,
        so it leaves no zombie). Always ``None`` when another process owns it."""
        if self.server is not None and self.server.proc is not None:
            code = self.server.proc.poll()
            if code is None:
                return None
            if code < 0:
                try:
                    return f"killed by {signal.Signals(-code).name}"
                except ValueError:
                    return f"killed by signal {-code}"
            return f"exited with status {code}"
        if self.adopted_pid is not None and not _alive(self.adopted_pid):
            return "is gone (adopted, not our child: how it ended is unknown)"
        return None

    @property
    def pid(self) -> int | None:
        if self.server is not None and self.server.proc is not None:
            return self.server.proc.pid
        return self.adopted_pid

    def restart(self) -> int:
        """Start the server again on the same data directory (its append-only file), port and
        password, so every client reconnects by itself; returns its pid. Raises ``IIIError``."""
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(self.url)
        port, password = parts.port, unquote(parts.password or "")
        with _flock(self.data_dir / "redis.lock"), _flock(self.redis_dir / "owner.lock", blocking=False) as free:
            if free is None:
                raise IIIError(f"cannot restart the embedded Redis: another redis-server holds {self.redis_dir}")
            self.server = self._launch(free, port=port, password=password)
            self.adopted_pid = None
            pid = self.server.proc.pid  # type: ignore[union-attr]
            _write_info(self.data_dir, {"url": self.url, "pid": os.getpid(), "redis_pid": pid})
            return pid

    def _join_or_adopt(self, info: dict[str, Any]) -> str:
        self.url = info["url"]
        self._harden()  # a server started by an earlier version may run without the limits
        if _alive(info.get("pid")):
            return self.url  # another runtime of the project owns it; it stops it
        # Its owner is gone (killed where no parent-death signal exists, or the server
        # survived it): this process stops it on exit instead of leaving it forever.
        c = _client(self.url)
        try:
            self.adopted_pid = int(c.info("server")["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            return self.url
        finally:
            c.close()
        _write_info(self.data_dir, {**info, "pid": os.getpid(), "redis_pid": self.adopted_pid})
        return self.url

    def _harden(self) -> None:
        c = _client(self.url)
        try:
            for name, value in hardening(self.maxmemory).items():
                c.config_set(name, value)
        except redis.RedisError:
            pass  # it keeps running as it was started; a start of ours always sets them
        finally:
            c.close()

    @property
    def owned(self) -> bool:
        return self.server is not None or self.adopted_pid is not None

    def stop(self, timeout: float = 10.0) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        elif self.adopted_pid is not None:
            self._stop_adopted(self.adopted_pid, timeout)
            self.adopted_pid = None
        else:
            return
        if _read_info(self.data_dir).get("pid") == os.getpid():
            try:
                _info_path(self.data_dir).unlink()
            except OSError:
                pass

    def _stop_adopted(self, pid: int, timeout: float) -> None:
        """SIGTERM (Redis's graceful shutdown) and wait until it is gone; it is not our child."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if fcntl is not None:
                with _flock(self.redis_dir / "owner.lock", blocking=False) as free:
                    if free is not None:
                        return
            elif not _alive(pid):
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
