"""Coalesced script calls against a real Redis: one reply per caller, errors kept apart."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff, NoBackoff

from iii_console.core.autopipe import AutoPipeline
from iii_console.core.redis_server import RedisServer

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL_ON_BAD = "if ARGV[1] == 'bad' then return redis.error_reply('bad input') end return redis.call('INCR', KEYS[1])"


def run(redis_url, body):
    async def main():
        client = aredis.Redis.from_url(redis_url)
        try:
            return await body(client, AutoPipeline(client))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(redis_url):
    async def body(client, pipe):
        echo = pipe.script(ECHO)
        got = await asyncio.gather(*(echo(keys=[f"k{i}"], args=[i]) for i in range(200)))
        return got, pipe.calls, pipe.round_trips

    got, calls, trips = run(redis_url, body)
    assert got == [[f"k{i}".encode(), str(i).encode()] for i in range(200)]
    assert calls == 200 and trips < 20


def test_an_error_reaches_only_its_caller(redis_url, r):
    async def body(client, pipe):
        incr = pipe.script(FAIL_ON_BAD)
        return await asyncio.gather(
            *(incr(keys=["n"], args=["bad" if i == 3 else "ok"]) for i in range(10)), return_exceptions=True
        )

    got = run(redis_url, body)
    assert isinstance(got[3], redis.ResponseError) and "bad input" in str(got[3])
    assert sorted(v for i, v in enumerate(got) if i != 3) == list(range(1, 10)) and int(r.get("n")) == 9


def test_scripts_flushed_from_redis_are_loaded_again(redis_url, r):
    async def body(client, pipe):
        echo = pipe.script(ECHO)
        first = await echo(keys=["a"], args=[1])
        await client.script_flush()
        again = await asyncio.gather(*(echo(keys=["b"], args=[i]) for i in range(5)))
        return first, again

    first, again = run(redis_url, body)
    assert first == [b"a", b"1"] and again == [[b"b", str(i).encode()] for i in range(5)]


def test_a_lost_connection_fails_every_waiting_call_with_a_connection_error():
    async def body():
        client = aredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        pipe = AutoPipeline(client)
        echo = pipe.script(ECHO)
        try:
            return await asyncio.gather(*(echo(keys=["a"], args=[i]) for i in range(5)), return_exceptions=True)
        finally:
            await client.aclose()

    got = asyncio.run(body())
    assert all(isinstance(e, redis.ConnectionError) for e in got), got


@pytest.mark.parametrize("n", [1, 300])
def test_a_cancelled_caller_does_not_disturb_the_others(redis_url, n):
    async def body(client, pipe):
        echo = pipe.script(ECHO)
        tasks = [asyncio.ensure_future(echo(keys=["k"], args=[i])) for i in range(n + 1)]
        tasks[0].cancel()
        return await asyncio.gather(*tasks[1:])

    got = run(redis_url, body)
    assert got == [[b"k", str(i).encode()] for i in range(1, n + 1)]


def test_a_restarted_redis_is_reconnected_to_and_scripts_loaded_again(tmp_path):
    """Redis stops (losing its scripts) and comes back on the same port: the next calls reconnect and succeed."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()

    async def body():
        client = aredis.Redis.from_url(server.url, socket_connect_timeout=1, retry=Retry(ConstantBackoff(0.2), 5))
        pipe = AutoPipeline(client)
        echo = pipe.script(ECHO)
        try:
            before = await asyncio.gather(*(echo(keys=["a"], args=[i]) for i in range(20)))
            server.stop()
            down = await asyncio.gather(echo(keys=["a"], args=["x"]), return_exceptions=True)
            server.start()
            after = await asyncio.gather(*(echo(keys=["b"], args=[i]) for i in range(20)))
            return before, down, after
        finally:
            await client.aclose()

    try:
        before, down, after = asyncio.run(body())
    finally:
        server.stop()
    assert before == [[b"a", str(i).encode()] for i in range(20)]
    assert isinstance(down[0], redis.ConnectionError), down
    assert after == [[b"b", str(i).encode()] for i in range(20)]


def test_a_redis_that_does_not_answer_in_time_is_a_timeout_and_the_connection_stays_usable(tmp_path):
    """A Redis that stops answering (SIGSTOP) fails the waiting callers as a timeout within the socket timeout
    (the server's 503), and once it answers again no reply left on that socket reaches a later caller."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    assert server.proc is not None

    async def body():
        client = aredis.Redis.from_url(server.url, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
        pipe = AutoPipeline(client)
        echo = pipe.script(ECHO)
        try:
            await echo(keys=["warm"], args=[0])  # the script is loaded: the stall below hits the call itself
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                slow = await asyncio.gather(*(echo(keys=["s"], args=[i]) for i in range(3)), return_exceptions=True)
                waited = time.monotonic() - t0
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            later = await asyncio.gather(*(echo(keys=["l"], args=[i]) for i in range(10)))
            return slow, waited, later
        finally:
            await client.aclose()

    try:
        slow, waited, later = asyncio.run(body())
    finally:
        server.stop()
    assert all(isinstance(e, redis.TimeoutError) for e in slow), slow
    assert waited < 1.5
    assert later == [[b"l", str(i).encode()] for i in range(10)]


def test_arguments_go_out_as_redis_py_would_send_them(redis_url):
    """Text (any script), bytes, ints and floats arrive as redis-py's own packer sends them; what it refuses
    (None, a bool) is refused with its error, and nothing is sent."""

    async def body(client, pipe):
        echo = pipe.script("return ARGV")
        ok = await echo(args=["é ü 中", b"\x00\xff", 7, -3, 1.5, 1e16, ""])
        bad = await asyncio.gather(echo(args=[None]), echo(args=[True]), return_exceptions=True)
        return ok, bad

    ok, bad = run(redis_url, body)
    assert ok == ["é ü 中".encode(), b"\x00\xff", b"7", b"-3", b"1.5", repr(1e16).encode(), b""]
    assert all(isinstance(e, redis.DataError) for e in bad), bad
