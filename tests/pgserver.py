"""A throwaway PostgreSQL server for the tests: its own data directory, port and socket folder.

Started from the machine's PostgreSQL binaries (``initdb`` and ``postgres`` on ``PATH``, or under
``/usr/lib/postgresql/*/bin``); it touches nothing of a system server's (its port, data or
sockets). PostgreSQL refuses to run as root: as root it runs as the ``postgres`` user, in a
folder of its own under the system's temporary directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.ports import free_port


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: ``PATH``'s, else the newest under ``/usr/lib/postgresql``."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    return versions[-1] if versions else None


class PgServer:
    """``start()`` it, read ``url`` (a superuser ``postgres`` without a password, on 127.0.0.1), ``stop()`` it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="iii-test-pg-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "postgres.log"
        #: As root: the user the server runs as (``initdb`` and ``postgres`` refuse root).
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("PostgreSQL refuses to run as root, and there is no postgres user to run it as") from None
            self._as = {"user": user.pw_uid, "group": user.pw_gid}
            os.chown(self.root, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PgServer:
        initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
        if initdb is None or postgres is None:
            raise RuntimeError("PostgreSQL's initdb and postgres are not installed")
        subprocess.run(
            [initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            **self._as,
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    postgres,
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.root),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as,
            )
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return self
            except psycopg.Error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not answer within 30 s: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a fast shutdown: SIGTERM's smart one waits for every client
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
