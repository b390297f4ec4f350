"""Tests that start real processes: the CLI, workers, servers, RabbitMQ and Sentinel nodes, browsers, the examples (slow)."""
