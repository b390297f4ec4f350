"""``luasrc.Script``: the short call the broker and the event sink use, on a real Redis."""

from __future__ import annotations

import redis

from iii_console.core.luasrc import Script, register

ECHO = "return {KEYS[1], ARGV[1]}"


def test_a_script_runs_and_is_loaded_again_after_redis_forgot_it(r: redis.Redis) -> None:
    echo = register(r, ECHO)
    assert isinstance(echo, Script)
    assert echo(keys=["a"], args=[1]) == [b"a", b"1"]
    r.script_flush()
    assert r.script_exists(echo.sha) == [False]
    assert echo(keys=["b"], args=[2]) == [b"b", b"2"]
    assert r.script_exists(echo.sha) == [True]


def test_a_script_registered_on_a_pipeline_runs_when_the_pipeline_does(r: redis.Redis) -> None:
    r.script_flush()
    pipe = r.pipeline(transaction=False)
    echo = register(pipe, ECHO)
    echo(keys=["a"], args=[1])
    echo(keys=["b"], args=[2])
    assert pipe.execute() == [[b"a", b"1"], [b"b", b"2"]]


def test_a_script_called_on_another_client_runs_there(r: redis.Redis, redis_url: str) -> None:
    echo = register(r, ECHO)
    pipe = r.pipeline(transaction=False)
    echo(keys=["a"], args=[1], client=pipe)
    r.script_flush()
    assert pipe.execute() == [[b"a", b"1"]]
    other = redis.Redis.from_url(redis_url)
    try:
        assert echo(keys=["c"], args=[3], client=other) == [b"c", b"3"]
    finally:
        other.close()
