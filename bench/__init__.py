"""Benchmark harness: iii-console against bare Dramatiq, Celery and Litestar on one Redis.

Run ``python -m bench`` (see ``bench/README.md``).
"""
