"""Queues on Dramatiq's Redis broker, with our fetch, retry, dead-letter and sweep."""
