"""The event record: encode/decode, redaction, the size cap, the emitter and step loggers (no Redis)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from iii_console.core.emitter import Emitter
from iii_console.core.errors import DecodeError
from iii_console.core.events import DATA_MAX_BYTES, REDACTED, Event, encode_data, redact

from ..helpers import FULL_EVENT

# --- the record -------------------------------------------------------------------------------


def test_every_field_survives_encode_and_decode():
    """Given an event with every field set, when encoded and decoded, then it is the same event with the entry id filled in."""
    assert Event.decode("5-0", FULL_EVENT.encode()) == dataclasses.replace(FULL_EVENT, id="5-0")


def test_decode_accepts_bytes_as_redis_returns_them():
    """Given the encoded fields and entry id as bytes, when decoded, then the event is the same as from str."""
    raw = {k.encode(): v.encode() for k, v in FULL_EVENT.encode().items()}
    assert Event.decode(b"5-0", raw) == Event.decode("5-0", FULL_EVENT.encode())


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


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, []),
        (
            {"trace_id": "t1", "message_id": "m1", "step": "S", "topic": "a.b", "queue": "a.b--S--normal", "attempt": 3},
            ["trace_id", "t1", "message_id", "m1", "step", "S", "topic", "a.b", "queue", "a.b--S--normal", "attempt", "3"],
        ),
        ({"attempt": 0, "duration_ms": 0.0, "worker": "w-1"}, ["attempt", "0", "worker", "w-1", "duration_ms", "0.0"]),
        (
            {"duration_ms": 12.345, "error": "ValueError: no", "data": {"k": [1, 2]}},
            ["duration_ms", "12.345", "error", "ValueError: no", "data", '{"k":[1,2]}'],
        ),
        ({"trace_id": "", "step": "", "data": 0}, ["data", "0"]),
    ],
)
def test_flat_writes_every_set_field_in_order_and_leaves_out_none_and_empty(fields: dict, expected: list[str]) -> None:
    ev = Event(type="message.processed", ts=1733480000123, **fields)
    assert ev.flat() == ["type", "message.processed", "ts", "1733480000123", *expected]
    if "" not in fields.values():  # an empty field is left out, and reads back as None
        assert Event.decode("1-0", ev.encode()) == dataclasses.replace(ev, id="1-0")


def test_timings_counted_as_they_come_equal_the_histograms_of_the_events():
    """The sink counts settles' processing times as they are written (``metrics.Timings``) instead of holding the
    events until the histograms are due: the tables are the same as aggregating the events, merged or not."""
    from iii_console.core import metrics

    evs = [
        Event(type="message.processed", topic="orders", step="Ship", duration_ms=d)
        for d in (0.4, 3.0, 7.5, 120.0, 9_000.0, 70_000.0)
    ]
    evs += [
        Event(type="message.failed", topic="orders", step="Ship", duration_ms=30.0),
        Event(type="message.processed", topic="mail", step="Send", duration_ms=12.0),
        Event(type="message.started", topic="orders", step="Ship"),  # no time: not counted
        Event(type="log", topic="orders", step="Ship", duration_ms=5.0),  # not a settle: not counted
    ]
    _counts, buckets, sums = metrics.aggregate(evs)
    whole = metrics.Timings()
    whole.add(evs)
    assert whole.n == 8 and bool(whole)
    assert whole.tables() == (buckets, sums)
    first, second = metrics.Timings(), metrics.Timings()
    first.add(evs[:3])
    second.add(evs[3:])
    first.merge(second)
    got_buckets, got_sums = first.tables()
    assert got_buckets == buckets
    assert got_sums == pytest.approx(sums)
    assert not metrics.Timings()
