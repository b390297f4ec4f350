"""What a start says while it imports the project's steps, and how a Ctrl+C stops it there.

A step file runs its module code when it is imported: a model loaded, a large library, a
connection opened. That can take seconds, before any console or banner is up. The user sees
which file it is (:class:`SlowImports`), and a first Ctrl+C stops the start at once
(:func:`interruptible`) instead of after the import.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType


class SlowImports:
    """Says which step file an import is stuck in: once it has taken ``first_s``, then every ``every_s``, then its time.

    Called with each file's path before it is imported and with ``None`` when the imports
    are done (``discover``'s ``on_file``). A file imported in less than ``first_s`` says nothing.
    """

    def __init__(self, say: Callable[[str], None], root: str | Path, *, first_s: float = 1.0, every_s: float = 5.0):
        self._say = say
        self._root = Path(root)
        self._first_s = first_s
        self._every_s = every_s
        self._cond = threading.Condition()
        #: The file being imported and when its import began (monotonic).
        self._current: tuple[Path, float] | None = None
        #: When to say the current file is still importing.
        self._due = 0.0
        #: Whether the current file was said to be slow (its time is then said when it ends).
        self._told = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="iii-slow-imports", daemon=True)

    def __enter__(self) -> SlowImports:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._cond:
            if exc_type is not None:
                self._current = None  # stopped in the middle (Ctrl+C): nothing was imported
        self(None)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(1.0)

    def __call__(self, path: Path | None) -> None:
        now = time.monotonic()
        with self._cond:
            if self._current is not None and self._told:
                self._tell(f"imported {self._name(self._current[0])} in {now - self._current[1]:.1f} s")
            self._current = None if path is None else (path, now)
            self._due = now + self._first_s
            self._told = False
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                if self._current is None:
                    self._cond.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                path, began = self._current
                waited = time.monotonic() - began
                more = "still importing" if self._told else "importing"
                self._tell(f"{more} {self._name(path)} ({waited:.0f} s so far; its module code runs on import; Ctrl+C stops)")
                self._told = True
                self._due = time.monotonic() + self._every_s

    def _tell(self, text: str) -> None:
        try:
            self._say(f"iii-console: {text}")
        except Exception:  # a line that cannot be written must not stop the start
            pass

    def _name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self._root.parent if self._root.name else self._root))
        except ValueError:
            return str(path)


@contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, a Ctrl+C raises ``KeyboardInterrupt`` at once in the main thread.

    An event loop's own SIGINT handling (``asyncio.run``'s, or ``loop.add_signal_handler``)
    only acts once the loop runs again, so a first Ctrl+C during a blocking import waited for
    the import to end. Outside the main thread, or with SIGINT ignored, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    if before in (signal.SIG_IGN, None):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
