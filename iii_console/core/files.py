"""Files only their owner may read: the project's ``.iii/`` directory and its logs.

Step output and tracebacks land in ``.iii/logs/``; with a umask of 022 they would
be readable by every local user, whichever Redis the project uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents ``0700``, and make ``path`` itself ``0700`` if this user owns it.

    Existing parents are left as they are (``.iii`` is the project's; its logs directory is what must be private).
    """
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
    try:
        if path.stat().st_uid == os.getuid():
            os.chmod(path, 0o700)
    except OSError:
        pass
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` if missing and make it ``0600`` (before a library opens it with the umask's mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def open_private_log(path: Path) -> IO[bytes]:
    """``path`` opened for appending, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")
