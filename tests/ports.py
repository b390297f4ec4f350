"""Ports for the servers the tests start (RabbitMQ nodes, Redis sentinels, an SMTP server)."""

from __future__ import annotations

import random
import socket

#: Ports this process has handed out: never the same one twice (three nodes of a cluster are given
#: six ports before any of them binds one).
_given: set[int] = set()


def free_port() -> int:
    """A port free now, picked at random below the kernel's ephemeral range, and below 30,000.

    A port from ``bind(0)`` comes from that range, where the kernel hands recently freed ports
    out again. Another test process probing at the same moment could be given the same one
    before the first server binds it. Outgoing connections also take their local ports from
    that range. Below 30,000 because a RabbitMQ node's CLI tools listen 10,000 above its
    distribution port, itself one of these. Free now is not reserved: a server that finds its
    port taken by the time it binds is started again on new ones (``RabbitNode.wait_started``).
    """
    for _ in range(100):
        port = random.randrange(20_000, 30_000)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
