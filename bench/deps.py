"""Install the peers and tools when missing: ``pip install -e .[bench]``, and ``wrk`` from Debian if we can."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Modules the optional dependency group ``bench`` provides.
NEEDED = ("celery", "httpx", "psutil")


def missing_modules() -> list[str]:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def ensure_python_deps() -> bool:
    """Install the ``bench`` extra if anything is missing; True if it installed something."""
    missing = missing_modules()
    if not missing:
        return False
    print(f"bench: installing the `bench` dependency group (missing: {', '.join(missing)})...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[bench]"], check=True, timeout=900)
    return True


def ensure_wrk() -> None:
    """Try Debian's ``wrk`` as root; without it the HTTP scenario uses ``bench.loadgen``."""
    if shutil.which("wrk") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    print("bench: installing wrk (apt-get install -y wrk)...", file=sys.stderr, flush=True)
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        pass
    if not shutil.which("wrk"):
        print("bench: wrk not available; the HTTP scenario will use bench.loadgen", file=sys.stderr, flush=True)
