"""Ports for the servers the tests start (RabbitMQ nodes, Redis sentinels, an SMTP server)."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A port free now, picked at random below the kernel's ephemeral range.

    A port from ``bind(0)`` comes from that range, where the kernel hands recently freed ports
    out again. Another test process probing at the same moment could be given the same one
    before the first server binds it. Outgoing connections also take their local ports from
    that range.
    """
    for _ in range(100):
        port = random.randrange(20_000, 32_768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
