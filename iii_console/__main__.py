"""``python -m iii_console`` is the ``iii-console`` command."""

import sys

from iii_console.cli import main

sys.exit(main())
