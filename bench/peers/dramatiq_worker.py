"""The bare Dramatiq peer's worker in one process, as the ``dramatiq`` CLI's worker child runs it.

``python bench/peers/dramatiq_worker.py THREADS``: a ``dramatiq.Worker`` over
``dramatiq_app``'s stock ``RedisBroker``, stopped by SIGTERM. ``bench.instructions`` runs it
under callgrind, which would otherwise have to follow the CLI's fork.
"""

from __future__ import annotations

import signal
import sys
import threading

import dramatiq

from bench.peers import dramatiq_app


def main() -> None:
    worker = dramatiq.Worker(dramatiq_app.broker, worker_threads=int(sys.argv[1]) if len(sys.argv) > 1 else 8)
    worker.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    worker.stop()


if __name__ == "__main__":
    main()
