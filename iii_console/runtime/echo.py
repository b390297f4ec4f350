"""The event echo: the stream, as it is written, printed on stdout by a child process.

``iii-console --no-ui`` (or with stdout not a terminal) echoes every event.
Decoding and printing them in the serving process cost its GIL 17–37 µs an
event (thousands a second under load), so a child of the supervisor does it,
like the workers do the handlers: the command the CLI names (``cli/echo.py``,
which reads with the ``tail`` command's reader and formats), with its stdout.

It reads from where the stream stood when it was entered. A slow reader of our
stdout (a log shipper, a pager) only delays the child; the server, scheduler
and workers never wait on it, and the events are in Redis regardless. Exited,
it first waits for this process's buffered events to be written, then closes
the child's stdin, on which the child reads to the end of the stream and exits,
so the last events of a stop (the workers' ``worker.stopped``) are printed
before it returns. The child dies with its parent: a supervisor that is killed
closes that pipe too, and on Linux the kernel also SIGKILLs the child
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

from iii_console.core.keys import as_str
from iii_console.core.redis_server import pdeathsig_preexec
from iii_console.runtime.services import Services

log = logging.getLogger(__name__)
#: How long a stop waits for the echo to print the last events before it kills it.
STOP_S = 10.0


@dataclass(frozen=True)
class EchoCommand:
    """The echo process to run: its command line, and the file (or descriptor) its stdout is."""

    argv: list[str]
    stdout: Any = None


class EventEcho:
    """Runs ``command`` printing every event written to the stream after it is entered."""

    def __init__(self, services: Services, command: EchoCommand) -> None:
        self.services = services
        self.command = command
        self._from = "0-0"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EventEcho:
        last: Any = self.services.client.xrevrange(self.services.keys.events, count=1)
        self._from = as_str(last[0][0]) if last else "0-0"
        env = dict(os.environ)
        env.update(
            III_ECHO_REDIS_URL=self.services.config.redis.url or "",
            III_ECHO_STREAM=self.services.keys.events,
            III_ECHO_FROM=self._from,
        )
        self.proc = subprocess.Popen(
            self.command.argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.command.stdout,
            preexec_fn=pdeathsig_preexec(signal.SIGKILL),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.services.sink.flush()
        proc = self.proc
        if proc is None:
            return
        assert proc.stdin is not None
        try:
            proc.stdin.close()  # end of file: read the stream to its end, then exit
        except OSError:
            pass
        try:
            code = proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            log.warning("the event echo did not finish within %.0f s; stopped", STOP_S)
            proc.kill()
            proc.wait()
            return
        if code != 0:
            log.warning("the event echo exited with code %s; events after that were not printed (they are on the stream)", code)
