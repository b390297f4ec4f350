"""A throwaway RabbitMQ node for the tests: its own ports, name, data, cookie and HOME.

It shares epmd (4369) with any other node on the machine and touches nothing
else of theirs: the system node keeps 5672 and its own data.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.ports import free_port

#: Node names of this process: with the pid, no two test processes can name two nodes alike.
_NAMES = itertools.count()


def rabbit_bin(name: str) -> str | None:
    """The real script, not the distribution's wrapper (which switches to the rabbitmq user and its HOME)."""
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if found is None:
        return None
    lib = Path("/usr/lib/rabbitmq/bin") / name
    return str(lib) if lib.exists() else found


class RabbitNode:
    def __init__(
        self,
        root: Path,
        port: int | None = None,
        dist_port: int | None = None,
        pid: int | None = None,
        cookie: str | None = None,
        config: str = "",
        name: str | None = None,
    ):
        self.root = root
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        #: Unique on the machine (epmd refuses a second node of a name: ``duplicate_node_name``).
        self.name = name or f"iii-test-{self.port}-{os.getpid()}-{next(_NAMES)}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        #: The node's process (also when another pytest process started it).
        self.pid = pid
        #: The Erlang cookie: nodes of one cluster share it.
        self.cookie = cookie or f"iiitest{self.port}{os.getpid()}"
        #: Extra rabbitmq.conf lines.
        self.config = config

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
        self.launch()
        return self.wait_started(timeout, repick=True)

    def launch(self) -> None:
        """Start the node's process (over its existing data dir, if any) without waiting for it."""
        home = self.root / "home"
        for d in (home, self.root / "mnesia", self.root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.port}\nloopback_users = none\n"
            "vm_memory_high_watermark.relative = 0.6\ndisk_free_limit.absolute = 50MB\n" + self.config
        )
        self.log = open(self.root / "server.out", "wb")  # noqa: SIM115  (the node's output, open while it runs)
        self.proc = subprocess.Popen(
            [rabbit_bin("rabbitmq-server") or "rabbitmq-server"],
            env=self.env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,  # a crashing node writes its MnesiaCore dump to its working directory
        )
        self.pid = self.proc.pid

    def wait_started(self, timeout: float = 60, *, repick: bool = False) -> RabbitNode:
        """Wait for the node to run. With ``repick`` (a first boot: nobody knows its ports yet), a node
        that found a port taken (``eaddrinuse``: another process bound it after ``free_port`` saw it
        free) is started again on new ports, up to twice."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        repicks = 2 if repick else 0
        while True:
            if self.proc.poll() is not None:
                said = (self.root / "server.out").read_text(errors="replace")
                if repicks and "eaddrinuse" in said:
                    repicks -= 1
                    self.log.close()
                    self.port, self.dist_port = free_port(), free_port()
                    self.launch()
                    continue
                raise RuntimeError(f"rabbitmq-server exited {self.proc.returncode}: {said[-2000:]}")
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

    def kill(self) -> None:
        """``kill -9`` the node's whole process group (the VM and its port programs), no goodbye to its peers."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            self.proc.wait(10)
            self.log.close()


class RabbitCluster:
    """Three (or ``size``) nodes of one cluster on this host: each its own ports, data dir and HOME, one cookie.

    The nodes boot in parallel as standalone nodes, then the others join the first, one
    after the other (``stop_app``, ``join_cluster``, ``start_app``). Never the system
    node: every port is a free one picked here.
    """

    def __init__(self, root: Path, size: int = 3):
        cookie = f"iiicluster{os.getpid()}{free_port()}"
        self.nodes = [RabbitNode(root / f"n{i}", cookie=cookie) for i in range(size)]

    @property
    def url(self) -> str:
        """Every node's URL, ``;``-separated (the form ``rabbitmq.url`` takes for a cluster)."""
        return ";".join(n.url for n in self.nodes)

    def start(self, timeout: float = 120) -> RabbitCluster:
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            n.launch()
        for n in self.nodes:
            n.wait_started(max(1.0, deadline - time.monotonic()), repick=True)
        first = self.nodes[0]

        def join(n: RabbitNode) -> None:
            for args in (("stop_app",), ("join_cluster", first.name), ("start_app",)):
                got = n.ctl(*args, timeout=max(1.0, deadline - time.monotonic()))
                if got.returncode != 0:
                    raise RuntimeError(f"{n.name}: rabbitmqctl {' '.join(args)}: {got.stderr.decode(errors='replace')}")

        for n in self.nodes[1:]:  # one at a time: two nodes joining at once can fail in mnesia
            join(n)
        self.wait_running(len(self.nodes), max(1.0, deadline - time.monotonic()))
        return self

    def running(self, via: RabbitNode | None = None) -> set[str]:
        """The names of the nodes the cluster counts as running (asked of ``via``, or of any live node)."""
        for n in [via] if via else self.nodes:
            if n is None or (n.proc is not None and n.proc.poll() is not None):
                continue
            got = n.ctl("cluster_status", "--formatter", "json", timeout=20)
            if got.returncode == 0:
                return set(json.loads(got.stdout).get("running_nodes", []))
        return set()

    def wait_running(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.running()) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster does not have {count} running nodes within {timeout:g} s: {self.running()}")
            time.sleep(0.5)

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def leader(self, queue: str, via: RabbitNode | None = None) -> RabbitNode:
        """The node that leads quorum queue ``queue`` now."""
        for n in [via] if via else self.nodes:
            if n is None or (n.proc is not None and n.proc.poll() is not None):
                continue
            got = n.ctl("list_queues", "name", "leader", "--formatter", "json", timeout=20)
            if got.returncode != 0:
                continue
            for row in json.loads(got.stdout):
                if row.get("name") == queue and row.get("leader"):
                    return self.node(row["leader"])
        raise LookupError(f"no leader known for {queue}")

    def stop(self) -> None:
        _parallel(lambda n: n.kill(), self.nodes)


def _parallel(fn: Callable[[RabbitNode], None], nodes: list[RabbitNode]) -> None:
    """``fn`` on every node at once; the first error is raised once all are done."""
    errors: list[BaseException] = []

    def run(n: RabbitNode) -> None:
        try:
            fn(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


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
            state: dict[str, Any] = json.loads(info.read_text()) if info.exists() else {"users": 0}
            if state["users"] == 0:
                self.node = RabbitNode(self.root / f"node-{os.getpid()}").start()
                state = {
                    "users": 0,
                    "root": str(self.node.root),
                    "port": self.node.port,
                    "dist_port": self.node.dist_port,
                    "pid": self.node.pid,
                    "name": self.node.name,
                }
            else:
                self.node = RabbitNode(Path(state["root"]), state["port"], state["dist_port"], state["pid"], name=state["name"])
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
