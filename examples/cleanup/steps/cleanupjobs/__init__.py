"""The cleanup example's helpers: settings, the sweep wrapper (``sweep``) and the database (``db``)."""
