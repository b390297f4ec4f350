"""A hang-up (the terminal a run was started in closed) stops the run as SIGTERM does.

Closing a terminal, or a dropped SSH session, sends SIGHUP to every process of
the job: the supervisor, its workers and the event echo. SIGHUP's default is to
die on the spot, which leaves in-flight messages to the sweeper and skips the
stop's own events. Instead each process treats it as a stop request, after
pointing its standard output and error at ``/dev/null`` where they were that
terminal: a write to a hung-up terminal fails with ``EIO``, and the stop path
(its "stopping..." line, a handler's ``print``, the echo's lines) must not fail
for want of a reader.

A process started with SIGHUP ignored (``nohup``, or a parent that ignores it)
keeps ignoring it: that is what the person asked for.

Output can also lose its reader without a hang-up (a log shipper that died, a job
``disown``ed from a terminal that closed): ``keep_writing`` gives step code a
``sys.stdout`` and ``sys.stderr`` whose writes then go to ``/dev/null`` instead of
failing the handler that printed.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

#: The standard descriptors that were a terminal when ``watch`` ran (a hung-up
#: terminal no longer answers ``isatty``, so this is read before it happens).
_tty_fds: tuple[int, ...] = ()


def watched() -> bool:
    """Whether this process acts on a hang-up: SIGHUP exists here and was not inherited ignored."""
    sig = getattr(signal, "SIGHUP", None)
    return sig is not None and signal.getsignal(sig) is signal.SIG_DFL


def ignore() -> None:
    """Ignore SIGHUP from now on (a process past its stop: what is left is its exit)."""
    sig = getattr(signal, "SIGHUP", None)
    if sig is not None:
        signal.signal(sig, signal.SIG_IGN)


def note_terminal() -> None:
    """Remember which of stdout and stderr are a terminal (for ``terminal_gone``)."""
    global _tty_fds
    fds = []
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                fds.append(fd)
        except OSError:
            pass
    _tty_fds = tuple(fds)


def reader_gone(exc: OSError) -> bool:
    """Whether a write failed because nobody can read it any more: a closed pipe or a hung-up terminal."""
    return isinstance(exc, BrokenPipeError) or exc.errno == errno.EIO


def to_devnull(*fds: int) -> None:
    """Point each of ``fds`` at ``/dev/null``: what is written to them from now on succeeds, unseen."""
    if not fds:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def terminal_gone() -> None:
    """Point stdout and stderr at ``/dev/null`` where they were the terminal: later writes succeed, unseen."""
    to_devnull(*_tty_fds)


def watch(stop: Callable[[], object]) -> bool:
    """Call ``stop`` on SIGHUP, once the terminal's descriptors point at ``/dev/null``.

    For a process without an event loop (a worker, the echo): ``stop`` runs in
    the main thread, between two bytecodes, so it should only set a flag.
    Returns whether the handler was installed (not when SIGHUP was ignored).
    """
    if not watched():
        return False
    note_terminal()

    def on_hangup(_signum: int, _frame: object) -> None:
        terminal_gone()
        stop()

    signal.signal(signal.SIGHUP, on_hangup)
    return True


def watch_loop(loop: asyncio.AbstractEventLoop, stop: Callable[[], object]) -> bool:
    """``watch`` for a process whose main thread runs an asyncio loop: ``stop`` runs on the loop."""
    if not watched():
        return False
    note_terminal()

    def on_hangup() -> None:
        terminal_gone()
        stop()

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    return True


class _KeepsWriting:
    """``sys.stdout`` or ``sys.stderr`` for step code: a write its reader can no longer take goes
    to ``/dev/null`` (and so does every later one) instead of raising in the handler.

    A step's ``print`` is diagnostics: a log shipper that died, or a terminal gone without a
    hang-up (``& disown``), must not fail the attempt it is in, nor, retried, send the message
    to the dead-letter queue. Everything else is the stream's own.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError as exc:
            if not reader_gone(exc):
                raise
            to_devnull(self._stream.fileno())
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            if not reader_gone(exc):
                raise
            to_devnull(self._stream.fileno())
            try:
                self._stream.flush()  # what it still held goes to /dev/null
            except OSError:
                pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def outliving(stream: Any) -> Any:
    """``stream``, whose writes go to ``/dev/null`` once its reader has gone instead of raising
    (for a writer that must not die with its terminal: the console's output thread)."""
    return stream if isinstance(stream, _KeepsWriting) else _KeepsWriting(stream)


def keep_writing() -> None:
    """Give step code a ``sys.stdout`` and ``sys.stderr`` that outlive their reader (``_KeepsWriting``)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            continue
        try:
            stream.fileno()
        except (OSError, ValueError, AttributeError):
            continue  # not a file descriptor: nothing the kernel can refuse
        setattr(sys, name, outliving(stream))
