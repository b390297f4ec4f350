"""Coalesced script calls against a real Redis: one reply per caller, errors kept apart."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aredis

from iii_console.core.autopipe import AutoPipeline

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
