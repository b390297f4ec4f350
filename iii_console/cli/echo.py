"""The event echo's process: ``run --no-ui`` / ``run`` into a pipe prints the stream here.

The supervisor starts it (``runtime/echo.py``) with the stream, and the id it
stood at when the run started, in ``III_ECHO_*``; its stdout is the events'
stdout (``output.reserve_stdout``'s copy). It prints every later event with
the ``tail`` command's reader and formats, so decoding and printing them costs
the serving process nothing. Its stdin is a pipe from the supervisor: end of
file (the supervisor stopping, or dead) means read the stream to its end, then
exit. SIGINT and SIGTERM are the supervisor's to act on (a terminal's Ctrl+C
reaches the whole process group): ignored here, so the events of the stop
itself are still printed. A hang-up (the terminal closed) points its output at
``/dev/null`` and changes nothing else: the stop it starts ends the echo as any
stop does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from iii_console.cli import output
from iii_console.cli.tail import follow
from iii_console.core.connection import redis_client
from iii_console.runtime import hangup

#: How long one read waits for new events; also how long the last, empty read of a stop takes.
BLOCK_MS = 200
#: After a read of under half a batch, how long to let events gather before the next: the echo
#: of a busy server then costs about half the CPU it did, and its lines lag by up to this much.
GATHER_S = 0.05


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    hangup.watch(lambda: None)
    if argv[1:] not in (["json"], ["human"]):
        print(f"usage: {argv[0]} json|human (the supervisor starts this)", file=sys.stderr)
        return 2
    render = output.print_json if argv[1] == "json" else output.print_human
    stopping = threading.Event()

    def wait_for_stop() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        stopping.set()

    threading.Thread(target=wait_for_stop, name="iii-echo-stop", daemon=True).start()
    client = redis_client(os.environ["III_ECHO_REDIS_URL"], socket_timeout=5)
    try:
        follow(
            client,
            os.environ["III_ECHO_STREAM"],
            os.environ["III_ECHO_FROM"],
            render,
            done=stopping.is_set,
            block_ms=BLOCK_MS,
            gather_s=GATHER_S,
            render_entries=output.print_json_entries if argv[1] == "json" else None,
        )
    finally:
        client.close()
    output.flush_stdout()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
