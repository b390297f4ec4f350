"""``python -m iii_console`` is the ``iii-console`` command."""

import sys

from iii_console.entry import main

sys.exit(main())
