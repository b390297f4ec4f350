"""A queue message's bytes: ``codec`` writes what Dramatiq writes and reads what Dramatiq reads, errors included."""

from __future__ import annotations

import json

import pytest
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from iii_console.adapters.queue.codec import decode_message, encode_message

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _message(data, options) -> Message:
    return Message(queue_name="q--S--normal", actor_name="q--S", args=(data,), kwargs={}, options=options)


@settings(max_examples=300, deadline=None)
@given(JSON, st.dictionaries(st.text(), JSON, max_size=4))
def test_written_and_read_as_dramatiq_does(data, options):
    msg = _message(data, options)
    assert encode_message(msg) == msg.encode()
    assert decode_message(msg.encode()) == Message.decode(msg.encode())


@pytest.mark.parametrize(
    "data",
    [float("nan"), float("inf"), "\ud800 lone surrogate", 2**70, -(2**70), "é ✓ 𝄞", {"nested": [1, 2.5, None, True]}],
)
def test_what_only_json_reads_is_read_all_the_same(data):
    body = _message(data, {"trace_id": "t"}).encode()
    got, want = decode_message(body), Message.decode(body)
    assert json.dumps(got.asdict()) == json.dumps(want.asdict())  # (NaN is not equal to itself)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"queue_name": "q"}',
        b'{"queue_name": "q", "actor_name": "a", "args": [], "kwargs": {}, '
        b'"options": {}, "message_id": "m", "message_timestamp": 1, "surprise": 1}',
        b"\xff\xfe",
    ],
)
def test_a_body_dramatiq_cannot_read_is_the_same_decode_error(body):
    with pytest.raises(DecodeError):
        Message.decode(body)
    with pytest.raises(DecodeError):
        decode_message(body)
