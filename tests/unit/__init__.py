"""Unit tests: no Redis, no process started (pure functions, parsing, config, models)."""
