"""A primary, one replica and three sentinels of our own, on free ports in a temp dir."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.ports import free_port

SERVICE = "iiimaster"


def sentinel_problem() -> str | None:
    """Why this machine cannot run the set, or None."""
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server is not installed"
    # Without a config file a server with sentinel mode refuses to start and says why.
    out = subprocess.run([binary, "--sentinel"], capture_output=True, text=True, timeout=10)
    if "Sentinel needs config file" not in out.stdout + out.stderr:
        return "this redis-server has no sentinel mode"
    return None


class SentinelSet:
    def __init__(self, root: Path):
        self.root = root
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinel_ports)}/{SERVICE}"

    def _server(self, port: int, *args: str) -> None:
        d = self.root / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(d),
                "--save",
                "",
                "--appendonly",
                "no",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> SentinelSet:
        self._server(self.primary_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        for port in self.sentinel_ports:
            conf = self.root / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 2000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.procs[port] = subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                # Every sentinel must know the others (to elect a leader) and the replica (to promote it:
                # sentinels learn replicas from the primary's INFO, so not once it is dead).
                masters = [self.sentinel(p).sentinel_master(SERVICE) for p in self.sentinel_ports]
                if redis.Redis(port=self.replica_port).info("replication").get("master_link_status") == "up" and all(
                    m.get("num-other-sentinels", 0) >= 2 and m.get("num-slaves", 0) >= 1 for m in masters
                ):
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the sentinel set did not come up in 20 s")

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1)

    def primary(self) -> int:
        _host, port = self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(5)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
