"""The headless core: steps, config, events, state and dead letters on bare Redis.

Nothing here imports Textual, Litestar or Dramatiq; ``tests/processes/test_import_hygiene.py``
holds that line.
"""
