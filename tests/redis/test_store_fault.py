"""Telling the deployment's Redis failing a handler from the handler failing (``adapters/queue/storefault.py``),
against a real Redis made full with ``maxmemory`` and one that is gone."""

from __future__ import annotations

import socket
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from iii_console.adapters.queue.storefault import StoreGate, fault_in, probe
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no description")


def _raised_from(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except Exception as exc:
            raise ValueError("the handler's own wrapping") from exc
    except ValueError as outer:
        return outer


def test_a_store_failure_is_found_anywhere_in_the_chain_and_nothing_else_is_one():
    assert fault_in(redis.ConnectionError("gone")) == "unreachable"
    assert fault_in(_raised_from(redis.TimeoutError("slow"))) == "unreachable"
    assert fault_in(_raised_from(redis.exceptions.OutOfMemoryError("OOM command not allowed"))) == "refuses_writes"
    # Redis 6 wraps an error raised inside a script as a plain ResponseError.
    wrapped = redis.ResponseError(
        "ERR Error running script (call to f_1): @user_script:1: -OOM command not allowed when used memory > 'maxmemory'."
    )
    assert fault_in(wrapped) == "refuses_writes"
    assert fault_in(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")) is None
    assert fault_in(ValueError("bad input")) is None
    assert fault_in(Unprintable()) is None  # judged without printing it


def test_the_probe_tells_a_full_redis_and_writes_nothing(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=False, extra=["--maxmemory-policy", "noeviction"]).start()
    client = redis.Redis.from_url(server.url)
    try:
        keys = Keys()
        assert probe(client, "refuses_writes", keys) is None
        assert probe(client, "unreachable", keys) is None
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
        assert probe(client, "refuses_writes", keys) == "refuses_writes"
        assert probe(client, "unreachable", keys) is None  # a full Redis still answers PING
        client.config_set("maxmemory", 0)
        assert probe(client, "refuses_writes", keys) is None
        assert client.dbsize() == 0  # the probe wrote nothing
        server.kill()
        assert probe(client, "refuses_writes", keys) == "unreachable"
    finally:
        client.close()
        server.stop()


def test_a_shut_gate_opens_when_its_prober_finds_redis_back(tmp_path):
    """Shut, the gate stays shut while its thread's probes find no Redis; the first probe that finds Redis back
    opens it."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    client = redis.Redis.from_url(server.url, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        gate = StoreGate(client, Keys(), probe_s=0.05)
        assert gate.open() and gate.shut_for is None
        server.kill()
        gate.shut("unreachable")
        time.sleep(0.3)  # several probes, each finding no Redis
        assert not gate.open() and gate.shut_for == "unreachable"
        server.start()
        deadline = time.monotonic() + 5
        while not gate.open() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gate.open() and gate.shut_for is None
    finally:
        client.close()
        server.stop()


def test_a_redis_refusing_for_where_it_is_is_told_from_a_refused_command():
    """Busy with a long script, failing to save its snapshot, short of replicas: each refuses writes until it is
    over, as a full Redis does; a command Redis refuses for what it is does not count."""
    for text in (
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
        "NOREPLICAS Not enough good replicas to write.",
        "ERR Error running script (call to f_1): @user_script:1: -MISCONF Errors writing to the AOF file",
    ):
        assert fault_in(_raised_from(redis.ResponseError(text))) == "refuses_writes", text
    for text in ("ERR unknown command 'FOO'", "WRONGTYPE Operation against a key holding the wrong kind of value"):
        assert fault_in(redis.ResponseError(text)) is None, text


def test_a_shut_gate_answers_at_once_while_its_probe_hangs():
    """A Redis that accepts connections and never answers holds a probe for as long as the client's timeouts
    allow: the gate's ``open()`` must not wait for it (a RabbitMQ consumer asking it would miss its
    connection's heartbeats)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the kernel's backlog; nothing ever answers
    host, port = silent.getsockname()
    client = redis.Redis(host=host, port=port, socket_timeout=3, socket_connect_timeout=3, retry=Retry(NoBackoff(), 0))
    try:
        gate = StoreGate(client, Keys(), probe_s=0.01)
        gate.shut("unreachable")
        time.sleep(0.2)  # the prober is inside its PING now, waiting out the 3 s socket timeout
        started = time.monotonic()
        for _ in range(3):
            assert not gate.open()
        assert time.monotonic() - started < 0.5
    finally:
        client.close()
        silent.close()
