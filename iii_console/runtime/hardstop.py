"""A stop that cannot hang: a deadline after which the process says where it was and exits, and
a second Ctrl+C (or, for a supervisor, a second SIGTERM) that stops it at once.

A graceful stop waits for running handlers (up to ``workers.shutdown_timeout``), then gives back
what its workers hold and writes its last events. Those last steps talk to Redis, and a Redis
that stops answering without closing its connections (a frozen process or VM, a partition that
drops packets) holds each call for its socket timeout and every retry, and the stop with them,
for minutes. Past the deadline the process prints every thread's stack on stderr (what it was
waiting on), kills the processes it started, and exits with code 1.

What a forced exit leaves is recovered as after a crash: a worker's in-flight messages by its
supervisor at once, or by the sweep once its heartbeat ages past ``heartbeat_timeout``; the
HTTP server has drained its requests before anything else stops, and every write of a handler
is a unit applied whole or not at all.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

#: How long past ``workers.shutdown_timeout`` a stop may take before it is forced: the pool's
#: 5 s for its children, then the last recoveries and events. Below the systemd units'
#: ``TimeoutStopSec`` (45 s with the default 30 s drain).
GRACE_S = 10.0
#: Where the report goes: the process's stderr, whatever ``sys.stderr`` was replaced with.
STDERR = 2
#: The exit code of a forced stop.
FORCED_EXIT = 1
#: After the deadline, how long the watchdog thread may wait for the interpreter before the C-level
#: fallback (``faulthandler``) dumps and exits without it (a thread that never releases the GIL).
FALLBACK_S = 5.0


class HardStop:
    """The deadline and the forced exit of one process's stop.

    ``kill`` runs first when the exit is forced (the supervisor SIGKILLs its worker processes there). A stop
    runs inside :meth:`armed`, or from :meth:`leaving` to the process's end; :meth:`now` forces the exit at
    once (a second signal). The report goes to stderr, and to ``log`` too when given.
    """

    def __init__(self, name: str, kill: Callable[[], None] | None = None, log: Path | None = None) -> None:
        self.name = name
        self._who = f"iii-console {name}" if name else "iii-console"
        self.kill = kill
        self._lock = threading.Lock()
        self._leaving = False
        #: A file that keeps the report when stderr reaches nobody (a console whose terminal closed).
        self._log: int | None = None
        if log is not None:
            try:
                self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError:
                pass

    def _watch(self, after_s: float, done: threading.Event) -> None:
        """Force the exit ``after_s`` from now unless ``done`` is set first; the C-level fallback after it."""

        def watch() -> None:
            if not done.wait(after_s):
                self.now(f"the stop did not end within {after_s:g} s")

        threading.Thread(target=watch, name="iii-hard-stop", daemon=True).start()
        try:
            faulthandler.dump_traceback_later(after_s + FALLBACK_S, exit=True, file=STDERR if self._log is None else self._log)
        except (ValueError, OSError):  # no usable stderr: the thread alone
            pass

    @contextlib.contextmanager
    def armed(self, shutdown_timeout_s: float) -> Iterator[None]:
        """Around a stop: force the exit if it has not ended ``shutdown_timeout_s`` + :data:`GRACE_S` from now."""
        done = threading.Event()
        self._watch(shutdown_timeout_s + GRACE_S, done)
        try:
            yield
        finally:  # the stop ended (or raised): no forced exit
            done.set()
            faulthandler.cancel_dump_traceback_later()

    def leaving(self, shutdown_timeout_s: float) -> None:
        """The process has begun to leave: force the exit if it is still here ``shutdown_timeout_s`` +
        :data:`GRACE_S` from now (the first call counts; later ones change nothing).

        For a process whose stop is the last thing it does (the live console): everything after the
        request is covered, the UI's own exit and the interpreter's, not only the runtime's stop.
        """
        with self._lock:
            if self._leaving:
                return
            self._leaving = True
        self._watch(shutdown_timeout_s + GRACE_S, threading.Event())

    def now(self, why: str) -> NoReturn:
        """Run ``kill``, say why and where every thread was, exit with :data:`FORCED_EXIT`.

        ``kill`` first: it gives the terminal back, so the report is not written to a screen that
        is about to be thrown away.
        """
        with self._lock:  # the watchdog and a second signal at once: one report
            if self.kill is not None:
                try:
                    self.kill()
                except Exception:
                    pass
            line = f"{self._who}: {why}; stopping now (what its workers held is recovered as after a crash). "
            for fd in (STDERR, self._log):
                if fd is None:
                    continue
                try:
                    os.write(fd, (line + "Where its threads were:\n").encode(errors="replace"))
                    faulthandler.dump_traceback(file=fd, all_threads=True)
                except (ValueError, OSError):  # nobody reads it any more: exit all the same
                    pass
            os._exit(FORCED_EXIT)
