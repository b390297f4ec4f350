"""Processes: the supervisor, queue worker processes, the scheduler."""
