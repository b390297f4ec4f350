"""Tests on the session's real Redis, with in-process runtimes and producers; no process started."""
