"""The data example's helpers: the database (``db``), the file scan and record checks (``records``)."""
