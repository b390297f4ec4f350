"""Child processes: each in its own session (process group), logged to a file, always stopped.

``Procs`` is a context manager; leaving it stops every process it started
(SIGTERM to the whole group, then SIGKILL after a grace period), so a failing
scenario leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


class BenchError(Exception):
    """A scenario could not run (a process died, a deadline passed)."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def tree(self) -> list[psutil.Process]:
        """This process and all its descendants (e.g. Celery's pool children)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


class Procs:
    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.started: list[Proc] = []
        self._n = 0

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        self._n += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{self._n:03d}-{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(argv),
                env={**self.env, **(env or {})},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def run(self, name: str, argv: Sequence[str], *, timeout: float, **kw: object) -> Proc:
        """Start a process and wait for it to exit 0 (a load generator, a client)."""
        proc = self.start(name, argv, **kw)  # type: ignore[arg-type]
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, grace_s=2)
            raise BenchError(f"{name} did not finish within {timeout:.0f}s") from None
        self.started.remove(proc)
        if proc.popen.returncode != 0:
            raise BenchError(f"{name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        return proc

    def stop(self, proc: Proc, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers in the group (pool children)
        if proc.alive():
            proc.popen.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self, grace_s: float = 20.0) -> None:
        procs = list(self.started)
        for p in procs:  # signal all first so they drain side by side
            if p.alive():
                _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self.stop(p, grace_s=0)

    def check(self, *procs: Proc) -> None:
        for p in procs:
            if not p.alive():
                raise BenchError(f"{p.name} (pid {p.pid}) exited with {p.popen.returncode}:\n{p.tail()}")

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(
    pred: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02, watch: Callable[[], None] | None = None
) -> float:
    """Poll ``pred`` until true; returns the seconds waited. ``watch`` may raise (a dead process)."""
    t0 = time.monotonic()
    while not pred():
        if watch is not None:
            watch()
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def rss_mb(procs: Sequence[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """User + system CPU seconds of ``processes`` (those that have exited count as 0)."""
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total
