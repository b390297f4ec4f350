"""Adapters: the stock parts (Litestar, Dramatiq, APScheduler) wired to the core."""
