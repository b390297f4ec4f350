"""The console reads Redis through the core only: it must not pull in the runtime (so it can attach anywhere)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_console_imports_without_the_runtime_the_adapters_or_their_libraries():
    """Given a fresh interpreter, when the console package is imported, then no runtime, adapter, Litestar or Dramatiq module is loaded."""
    code = (
        "import json, sys\n"
        "import iii_console.tui, iii_console.tui.app\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('iii_console.runtime', 'iii_console.adapters',"
        " 'litestar', 'dramatiq', 'uvicorn')))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
