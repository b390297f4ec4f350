"""``python -m iii_console.cli`` is the ``iii-console`` command, as ``python -m iii_console``."""

import sys

from iii_console.entry import main

sys.exit(main())
