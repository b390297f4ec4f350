"""Workers on two "hosts" share one Redis: each host is a network namespace of its
own, reaching Redis over a veth link, as a second machine would over the network.

Needs root (to create namespaces and links); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from iii_console.adapters.queue.producer import subscriptions_for
from iii_console.core.discovery import discover
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer
from iii_console.runtime.runner import StepRunner
from iii_console.runtime.services import Services

from ..checker import check
from ..helpers import CHAOS_CONFIG, HB_TIMEOUT, SWEEP, make_project, wait_for, worker_holds, worker_pids

pytestmark = pytest.mark.slow

#: Like the checker's step, and it also counts executions per network namespace,
#: which is how the test tells the hosts apart.
HOST_STEP = '''
import os
import redis
from iii_console import Step, queue

config = Step(name="Effect", triggers=[queue("chaos")])
_clients = {}
APPLY = """
redis.call("HINCRBY", "chaos:executions", ARGV[1], 1)
redis.call("HINCRBY", "chaos:by_netns", ARGV[2], 1)
if redis.call("SADD", "chaos:done", ARGV[1]) == 1 then redis.call("RPUSH", "chaos:effects", ARGV[1]) end
"""
NETNS = os.readlink("/proc/self/ns/net")


def handler(data, ctx):
    url = os.environ["III_TEST_REDIS"]  # this host's route to Redis
    r = _clients.get(url) or _clients.setdefault(url, redis.Redis.from_url(url))
    r.eval(APPLY, 0, data["key"], NETNS)
    if data.get("work_ms"):
        import time
        time.sleep(data["work_ms"] / 1000)
'''


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


class Hosts:
    """Two network namespaces, each linked to this one by a veth pair with its own /30."""

    def __init__(self) -> None:
        tag = os.getpid() % 10_000
        self.subnet = f"10.231.{os.getpid() % 250}"
        self.names = [f"iii-host{n}-{tag}" for n in (1, 2)]
        self.links = [f"iiih{n}-{tag}" for n in (1, 2)]
        #: per host: (address on this side, address inside the host)
        self.addrs = [(f"{self.subnet}.{4 * n + 1}", f"{self.subnet}.{4 * n + 2}") for n in (0, 1)]

    def create(self) -> None:
        for ns, link, (here, there) in zip(self.names, self.links, self.addrs):
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("addr", "add", f"{here}/30", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", ns, "addr", "add", f"{there}/30", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        for ns, link in zip(self.names, self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def inode(self, n: int) -> str:
        return f"net:[{os.stat(f'/run/netns/{self.names[n]}').st_ino}]"


@pytest.fixture
def hosts():
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    h = Hosts()
    try:
        h.create()
    except (subprocess.CalledProcessError, OSError) as exc:
        h.destroy()
        pytest.skip(f"network namespaces are not available here: {getattr(exc, 'stderr', '') or exc}")
    yield h
    h.destroy()


class HostWorkers:
    """``iii-console --no-ui --role worker`` run inside a namespace, in a process group of its own."""

    def __init__(self, ns: str, project: Path, redis_url: str):
        env = dict(os.environ, III_TEST_REDIS=redis_url)
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "iii_console",
                "--no-ui",
                "--role",
                "worker",
                "--processes",
                "1",
                "--threads",
                "4",
            ],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        banner = self.proc.stderr.readline()
        if "running" not in banner:
            self.kill()
            raise AssertionError(f"iii-console did not start in {ns}: {banner}{self.proc.stderr.read()}")
        threading.Thread(target=lambda: [None for _ in iter(self.proc.stderr.readline, "")], daemon=True).start()

    def kill(self) -> None:
        """Lose the whole host at once: supervisor and workers, no draining."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def test_workers_on_two_network_hosts_share_the_load_and_losing_one_loses_nothing(tmp_path, hosts):
    here = [a for a, _there in hosts.addrs]
    server = RedisServer(
        tmp_path / "redis", appendonly=False, extra=["--bind", "127.0.0.1", *here, "--protected-mode", "no"]
    ).start()
    keys = Keys()
    r = redis.Redis.from_url(server.url)
    running: list[HostWorkers] = []
    try:
        for n, addr in enumerate(here):
            url = f"redis://{addr}:{server.port}/0"
            project = tmp_path / f"host{n + 1}"
            make_project(project, {"effect_step.py": HOST_STEP}, CHAOS_CONFIG, redis_url=url)
            running.append(HostWorkers(hosts.names[n], project, url))
        wait_for(lambda: len(worker_pids(r, keys)) == 2, timeout=30, what="a worker on each host")
        cfg = make_project(tmp_path / "producer", {"effect_step.py": HOST_STEP}, CHAOS_CONFIG, redis_url=server.url)
        services = Services.open(cfg, "producer")
        producer = StepRunner(services, subscriptions_for(discover(cfg.steps_path).steps)).producer
        sent = [f"k{i}" for i in range(600)]
        # ~200 messages/s against 2 hosts x 4 threads x 50 ms (160/s): a backlog builds,
        # so each host always holds messages, as it would when it is lost.
        feeder = threading.Thread(
            target=lambda: [(producer.enqueue("chaos", {"key": k, "work_ms": 50}, trace_id=k), time.sleep(0.005)) for k in sent]
        )
        feeder.start()
        share = lambda: {k.decode(): int(v) for k, v in r.hgetall("chaos:by_netns").items()}  # noqa: E731
        wait_for(lambda: len(share()) == 2 and min(share().values()) >= 20, timeout=30, what="both hosts working")
        before_loss = share()
        pids = worker_pids(r, keys)
        lost_host = next(wid for pid, wid in pids.items() if _netns_of(pid) == hosts.inode(0))
        held = worker_holds(r, keys, lost_host)
        running[0].kill()
        t_loss = time.monotonic()
        wait_for(
            lambda: not worker_holds(r, keys, lost_host),
            timeout=HB_TIMEOUT + SWEEP + 10,
            interval=0.02,
            what="the lost host's messages back in the queue",
        )
        recovered_after = time.monotonic() - t_loss
        feeder.join()
        wait_for(
            lambda: (rep := check(r, keys, set(sent))).effects >= len(sent) and rep.stuck == 0,
            timeout=60,
            interval=0.2,
            what="every message processed on the surviving host",
        )
        report = check(r, keys, set(sent))
        after = share()
        services.close()
        print(
            f"\nhosts: executions by network namespace before the loss {before_loss}, at the end {after};"
            f" host 1 lost holding {held} messages, recovered after {recovered_after:.2f}s\n{report.table()}"
        )
        assert set(after) == {hosts.inode(0), hosts.inode(1)}  # every execution ran on one of the two hosts
        assert os.readlink("/proc/self/ns/net") not in after
        assert report.lost == 0 and report.unexpected == 0 and report.duplicated_effects == 0 and report.stuck == 0
        assert held > 0 and recovered_after <= HB_TIMEOUT + SWEEP + 2
        assert after[hosts.inode(1)] > before_loss[hosts.inode(1)]  # the survivor took over the rest
    finally:
        for w in running:
            w.kill()
        r.close()
        server.stop()


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")
