"""A throwaway RabbitMQ node for the tests: its own ports, name, data, cookie and HOME.

It shares epmd (4369) with any other node on the machine and touches nothing
else of theirs: the system node keeps 5672 and its own data.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rabbit_bin(name: str) -> str | None:
    """The real script, not the distribution's wrapper (which switches to the rabbitmq user and its HOME)."""
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if found is None:
        return None
    lib = Path("/usr/lib/rabbitmq/bin") / name
    return str(lib) if lib.exists() else found


class RabbitNode:
    def __init__(self, root: Path, port: int | None = None, dist_port: int | None = None, pid: int | None = None):
        self.root = root
        self.port = port or _free_port()
        self.dist_port = dist_port or _free_port()
        self.name = f"iii-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        #: The node's process (also when another pytest process started it).
        self.pid = pid

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        home = self.root / "home"
        return {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.root / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
        }

    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [rabbit_bin("rabbitmqctl") or "rabbitmqctl", "--node", self.name, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
        )

    def start(self, timeout: float = 60) -> RabbitNode:
        home = self.root / "home"
        for d in (home, self.root / "mnesia", self.root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(f"iiitest{self.port}{os.getpid()}")
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.port}\nloopback_users = none\n"
            "vm_memory_high_watermark.relative = 0.6\ndisk_free_limit.absolute = 50MB\n"
        )
        self.log = open(self.root / "server.out", "wb")  # noqa: SIM115  (the node's output, open while it runs)
        self.proc = subprocess.Popen(
            [rabbit_bin("rabbitmq-server") or "rabbitmq-server"],
            env=self.env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited {self.proc.returncode}: "
                    f"{(self.root / 'server.out').read_text(errors='replace')[-2000:]}"
                )
            if self.ctl("await_startup", "--timeout", "20").returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq node {self.name} did not start within {timeout:g} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.pid is None:
            return
        self.ctl("stop", timeout=30)
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            self.log.close()
        # The Erlang VM's epmd registration and child port programs go with its process group.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            self.proc.wait(5)


class SharedNode:
    """One node for every pytest process of a run (pytest-xdist workers share ``root``).

    The first to arrive starts it, the others attach; the last to leave stops it.
    A counter under a file lock keeps the tally.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.node: RabbitNode | None = None

    def _locked(self) -> _Lock:
        return _Lock(self.root / "lock")

    def acquire(self) -> RabbitNode:
        info = self.root / "node.json"
        with self._locked():
            state = json.loads(info.read_text()) if info.exists() else {"users": 0}
            if state["users"] == 0:
                self.node = RabbitNode(self.root / f"node-{os.getpid()}").start()
                state = {
                    "users": 0,
                    "root": str(self.node.root),
                    "port": self.node.port,
                    "dist_port": self.node.dist_port,
                    "pid": self.node.pid,
                }
            else:
                self.node = RabbitNode(Path(state["root"]), state["port"], state["dist_port"], state["pid"])
            state["users"] += 1
            info.write_text(json.dumps(state))
        return self.node

    def release(self) -> None:
        info = self.root / "node.json"
        with self._locked():
            state = json.loads(info.read_text())
            state["users"] -= 1
            if state["users"] == 0 and self.node is not None:
                self.node.stop()
                info.unlink()
            else:
                info.write_text(json.dumps(state))


class _Lock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
