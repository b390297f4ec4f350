"""The ``iii-console`` command's entry point.

Loading the CLI takes a good half second (pydantic, redis, click, the step model);
a Ctrl+C in that window would otherwise print a ``KeyboardInterrupt`` traceback.
Nothing has started yet then, so it is a plain interrupted exit.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from iii_console.cli import main as cli_main
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    return cli_main()
