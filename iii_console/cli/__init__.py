"""The ``iii-console`` command line: :data:`cli` (the click group) and :func:`main`.

:mod:`iii_console.cli.main` holds the group and registers every command family's
module on it; :mod:`iii_console.cli.common` is what those modules share.
"""

from iii_console.cli.main import cli, main

__all__ = ["cli", "main"]
