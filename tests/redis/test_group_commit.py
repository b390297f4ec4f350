"""Group commit of acks: concurrent acks from many worker threads settle in shared script calls.

Real Redis, a real ``IIIBroker`` and event sink. Each test fetches messages into
this worker's in-flight set the way a consumer does, then acks them from many
threads at once, and checks the stream and Redis message by message: every
message settled once and its ``message.processed`` written once, after its own
``message.started``; a message this worker no longer holds gets none. An ack is
written behind: the thread that hands it over goes on, the one that commits
retries a failed call until it applies, and a stop gives up on Redis that is away.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis

from iii_console.adapters.queue.broker import IIIBroker
from iii_console.core import metrics
from iii_console.core.connection import redis_client
from iii_console.core.emitter import Emitter, StreamSink
from iii_console.core.events import Event
from iii_console.core.keys import Keys

from ..helpers import wait_for
from ..tcpproxy import TcpProxy

QUEUE = "jobs--Work--normal"


def _stream(r: redis.Redis, keys: Keys) -> list[Event]:
    return [Event.decode(i, f) for i, f in r.xrange(keys.events)]


class _Setup:
    def __init__(self, url: str, keys: Keys):
        self.client = redis_client(url)
        self.sink = StreamSink(self.client, keys.events, keys=keys)
        self.emitter = Emitter(self.sink, worker="w1")
        self.broker = IIIBroker(client=self.client, keys=keys, emitter=self.emitter)
        self.broker.declare_queue(QUEUE)
        self.consumer: Any = None

    def fetch(self, n: int) -> list[Any]:
        """Enqueue ``n`` messages and fetch them into this worker's in-flight set, each with its started event."""
        import dramatiq
        from dramatiq.message import Message

        for i in range(n):
            self.broker.enqueue(Message(queue_name=QUEUE, actor_name="work", args=(i,), kwargs={}, options={"topic": "jobs"}))
        self.consumer = self.broker.consume(QUEUE, prefetch=n, timeout=100)
        got: list[Any] = []
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            m = next(self.consumer)
            if m is not None:
                got.append(m)
        assert len(got) == n
        for m in got:
            where = {"message_id": m.message_id, "topic": "jobs", "step": "Work", "queue": "jobs", "attempt": 1}
            self.emitter.emit("message.started", **where)
            m.iii_seq = self.emitter.seq
            m.iii_event = self.emitter.make("message.processed", duration_ms=1.0, **where)
        assert dramatiq  # the broker's message proxies come from Dramatiq
        return got

    def ack_all(self, messages: list[Any]) -> dict[str, BaseException | None]:
        """Ack every message from its own thread, all released at once."""
        gate = threading.Barrier(len(messages))
        out: dict[str, BaseException | None] = {}

        def one(m: Any) -> None:
            gate.wait()
            try:
                self.consumer.ack(m)
                out[m.message_id] = None
            except BaseException as exc:
                out[m.message_id] = exc

        threads = [threading.Thread(target=one, args=(m,)) for m in messages]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return out

    def in_flight(self, r: redis.Redis) -> set[str]:
        return {v.decode() for v in r.smembers(f"{self.broker.namespace}:__acks__.{self.broker.broker_id}.{QUEUE}")}

    def close(self) -> None:
        self.sink.close()
        self.broker.close()
        self.client.close()


@pytest.fixture
def setup(redis_url, keys):
    made: list[_Setup] = []

    def make(url: str = redis_url) -> _Setup:
        s = _Setup(url, keys)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def proxied(setup, redis_server):
    """A setup whose client reaches Redis through a TCP proxy the test can cut: (proxy, setup)."""
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    try:
        yield proxy, setup(proxy.url)
    finally:
        proxy.close()


def _slowed(broker: IIIBroker, seconds: float) -> None:
    """Make each group's call take ``seconds`` longer, so acks gather behind it."""
    commit = broker.acks._commit

    def slow(acks: list[Any]) -> list[int]:
        time.sleep(seconds)
        return commit(acks)

    broker.acks._commit = slow


def _check_once(r: redis.Redis, keys: Keys, settled: set[str]) -> None:
    """Each message in ``settled`` has one processed event, after its started; no other message has any."""
    stream = _stream(r, keys)
    processed = Counter(e.message_id for e in stream if e.type == "message.processed")
    assert set(processed) == settled
    assert all(n == 1 for n in processed.values()), processed
    position = {(e.type, e.message_id): i for i, e in enumerate(stream)}
    for mid in settled:
        assert position[("message.started", mid)] < position[("message.processed", mid)]


def test_concurrent_acks_go_out_together_and_each_writes_one_processed(setup, r, keys):
    s = setup()
    messages = s.fetch(48)
    _slowed(s.broker, 0.02)
    errors = s.ack_all(messages)
    assert errors == {m.message_id: None for m in messages}
    assert s.broker.acks.acks == 48
    assert s.broker.acks.calls < 48, "acks that arrived while a call was on the wire were not grouped"
    assert s.in_flight(r) == set()
    assert r.hlen(f"{s.broker.namespace}:{QUEUE}.msgs") == 0
    s.sink.flush()
    _check_once(r, keys, {m.message_id for m in messages})
    counts, _ = metrics.read(r, keys)
    assert counts[("message.processed", "jobs", "Work")] == 48


def test_a_buffered_event_with_text_utf8_cannot_hold_rides_along_with_an_ack(setup, r, keys):
    """Given a handler's log line whose text holds a lone surrogate (no UTF-8 for it) still
    buffered when its message is acked, when the ack's call carries it (MessagePack), then
    the message settles with its processed event and the line lands with a ``?`` in its place."""
    s = setup()
    s.sink._interval = 5.0  # the flusher leaves them: the ack's call is what writes them
    (m,) = s.fetch(1)
    s.emitter.emit("log", message_id=m.message_id, step="Work", error="bad \ud800 text")
    m.iii_seq = s.emitter.seq
    assert s.ack_all([m]) == {m.message_id: None}
    wait_for(lambda: not s.in_flight(r), timeout=5, what="the ack applied")
    s.sink.flush()
    got = [e for e in _stream(r, keys) if e.message_id == m.message_id]
    assert [e.type for e in got] == ["message.started", "log", "message.processed"]
    assert got[1].error == "bad ? text"


def test_a_settle_refused_in_a_group_writes_nothing_for_that_message(setup, r, keys):
    s = setup()
    messages = s.fetch(12)
    swept = messages[:3]
    # Swept to another worker: no longer in this worker's in-flight set.
    ack_key = f"{s.broker.namespace}:__acks__.{s.broker.broker_id}.{QUEUE}"
    for m in swept:
        r.srem(ack_key, m.options["redis_message_id"])
    _slowed(s.broker, 0.02)
    results: dict[str, int] = {}
    commit = s.broker.acks._commit

    def record(acks: list[Any]) -> list[int]:
        out = commit(acks)
        results.update(zip((a.mid for a in acks), out))
        return out

    s.broker.acks._commit = record
    errors = s.ack_all(messages)
    assert set(errors.values()) == {None}
    assert {mid for mid, ok in results.items() if not ok} == {m.message_id for m in swept}
    # The refused ones' bodies stay for the worker that holds them now.
    assert all(r.hexists(f"{s.broker.namespace}:{QUEUE}.msgs", m.options["redis_message_id"]) for m in swept)
    s.sink.flush()
    _check_once(r, keys, {m.message_id for m in messages[3:]})


def test_a_connection_lost_mid_group_leaves_each_message_settled_once_or_in_flight(proxied, r, keys):
    """The committing thread retries until the link is back; no thread that handed an ack over sees the error."""
    proxy, s = proxied
    messages = s.fetch(24)
    s.sink.flush()
    cut = threading.Event()
    failures: list[BaseException] = []
    rids = {m.options["redis_message_id"]: m.message_id for m in messages}
    mid_outage: list[str] = []

    commit = s.broker.acks._commit

    def cutting(acks: list[Any]) -> list[int]:
        time.sleep(0.01)
        if not cut.is_set() and len(acks) > 1:
            cut.set()
            proxy.cut(1.0)  # the link drops just as this group's call goes out
        try:
            return commit(acks)
        except BaseException as exc:
            failures.append(exc)
            if len(failures) == 1:
                # Read past the proxy, mid-outage: each message settled (gone from the
                # in-flight set, one processed) or still in flight (none); never in between.
                holding = s.in_flight(r)
                processed = Counter(e.message_id for e in _stream(r, keys) if e.type == "message.processed")
                mid_outage.extend(
                    f"{mid}: in flight {rid in holding}, processed {processed[mid]}"
                    for rid, mid in rids.items()
                    if processed[mid] != (0 if rid in holding else 1)
                )
            raise

    s.broker.acks._commit = cutting
    t0 = time.monotonic()
    errors = s.ack_all(messages)
    assert failures, "the cut hit no call"
    assert all(isinstance(e, redis.ConnectionError) for e in failures), failures
    assert mid_outage == []
    # Nobody saw the error: the committing thread retried until the link came back (~1 s).
    assert errors == {m.message_id: None for m in messages}
    assert time.monotonic() - t0 < 20
    assert s.in_flight(r) == set()
    assert s.consumer.queued_message_ids == set()
    wait_for(lambda: s.sink.flush(0.5), timeout=10, what="the sink to write again")
    _check_once(r, keys, {m.message_id for m in messages})


def test_a_handed_over_ack_frees_its_prefetch_slot_only_once_it_applies(setup, r, keys):
    s = setup()
    first, second = s.fetch(2)
    gate = threading.Event()
    commit = s.broker.acks._commit

    def held(acks: list[Any]) -> list[int]:
        gate.wait(10)
        return commit(acks)

    s.broker.acks._commit = held
    leader = threading.Thread(target=s.consumer.ack, args=(first,))
    leader.start()
    wait_for(lambda: s.broker.acks.calls == 1, timeout=5, what="the first call on the wire")
    t0 = time.monotonic()
    s.consumer.ack(second)  # handed over behind the call on the wire: returns at once
    assert time.monotonic() - t0 < 0.5
    assert s.consumer.queued_message_ids == {first.message_id, second.message_id}
    assert s.in_flight(r) == {first.options["redis_message_id"], second.options["redis_message_id"]}
    gate.set()
    leader.join(10)
    assert not leader.is_alive()
    # The thread that led committed the second ack too, in a call of its own, before it went on.
    assert (s.broker.acks.calls, s.broker.acks.acks) == (2, 2)
    assert s.consumer.queued_message_ids == set()
    assert s.in_flight(r) == set()
    assert s.broker.settle_handed_over(1.0) is True
    s.sink.flush()
    _check_once(r, keys, {first.message_id, second.message_id})


def test_a_stop_while_redis_is_away_gives_up_and_leaves_the_messages_in_flight(proxied, r, keys):
    proxy, s = proxied
    messages = s.fetch(4)
    s.sink.flush()
    proxy.cut(30.0)
    leader = threading.Thread(target=s.consumer.ack, args=(messages[0],))
    leader.start()
    wait_for(lambda: s.broker.acks.calls >= 2, timeout=10, what="a retry")
    for m in messages[1:]:
        s.consumer.ack(m)
    t0 = time.monotonic()
    assert s.broker.settle_handed_over(0.5) is False  # they are still this worker's to give back
    leader.join(10)
    assert not leader.is_alive()
    assert time.monotonic() - t0 < 5
    # Nothing applied: all four are still this worker's, for a stop's requeue or the sweep.
    assert s.in_flight(r) == {m.options["redis_message_id"] for m in messages}
    assert not [e for e in _stream(r, keys) if e.type == "message.processed"]


def test_an_idle_ack_goes_out_at_once_alone(setup, r, keys):
    s = setup()
    (m,) = s.fetch(1)
    t0 = time.monotonic()
    s.consumer.ack(m)
    assert time.monotonic() - t0 < 1.0
    assert (s.broker.acks.calls, s.broker.acks.acks) == (1, 1)
    s.sink.flush()
    _check_once(r, keys, {m.message_id})


def test_a_group_redis_refuses_for_one_queue_settles_the_others(setup, r, keys):
    """A key of the wrong type fails the whole script: the group is retried one ack at a time,
    and the refused one again until its key is put right."""
    s = setup()
    messages = s.fetch(6)
    # One message's fan-in group key holds a string: its settle is refused, the rest go through.
    bad = messages[0]
    gkey = Keys().group(str(uuid.uuid4()))
    r.set(gkey, "not a hash")
    s.broker.group_args = lambda m: [gkey if m is bad else "", m.message_id or ""]  # type: ignore[method-assign]
    _slowed(s.broker, 0.02)
    acking = threading.Thread(target=s.ack_all, args=(messages,))
    acking.start()
    wait_for(lambda: s.in_flight(r) == {bad.options["redis_message_id"]}, timeout=10, what="the others to settle")
    s.sink.flush()
    _check_once(r, keys, {m.message_id for m in messages[1:]})
    # The consumer hears of a settle just after Redis applied it (the committing thread tells it).
    wait_for(lambda: s.consumer.queued_message_ids == {bad.message_id}, timeout=10, what="the others' slots freed")
    r.delete(gkey)
    wait_for(lambda: s.in_flight(r) == set(), timeout=10, what="the refused one to settle once its key is right")
    acking.join(10)
    assert not acking.is_alive()
    s.sink.flush()
    _check_once(r, keys, {m.message_id for m in messages})
