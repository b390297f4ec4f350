"""The console's read side of Redis, without a screen: tailing the stream, finding a trace, snapshots."""

from __future__ import annotations

import json

from iii_console.core.dlq import DeadLetter
from iii_console.core.events import Event
from iii_console.core.state import StateStore
from iii_console.tui.source import Snapshot, StreamTail, cron_specs, fetch, find_trace

from ..helpers import T0_MS, lifecycle, xadd


def test_the_tail_loads_recent_history_then_follows_in_order(r, keys):
    """Given 30 events on the stream, when the tail starts with a history of 10, then it returns the newest 10 and then only new ones."""
    xadd(r, keys, [Event("log", T0_MS + i, data={"message": str(i)}) for i in range(30)])
    tail = StreamTail(keys.events, history=10, block_ms=10)
    first = tail.read(r)
    assert [e.data["message"] for e in first] == [str(i) for i in range(20, 30)] and tail.history_count == 10
    assert tail.read(r) == []
    xadd(r, keys, [Event("log", T0_MS + 100 + i, data={"message": f"new{i}"}) for i in range(3)])
    assert [e.data["message"] for e in tail.read(r)] == ["new0", "new1", "new2"]


def test_a_foreign_entry_on_the_stream_is_skipped_and_counted(r, keys):
    """Given an entry that is not an iii event, when tailing, then it is counted and the rest still arrive."""
    r.xadd(keys.events, {"something": "else"}, id=f"{T0_MS}-0")
    xadd(r, keys, [Event("log", T0_MS + 1, data={"message": "ok"})])
    tail = StreamTail(keys.events)
    assert [e.type for e in tail.read(r)] == ["log"] and tail.decode_errors == 1


def _read_with_stream_client(tail: StreamTail, redis_url: str) -> list[Event]:
    """What ``tail`` reads through the console's own stream client (``connect_stream``)."""
    from iii_console.tui.source import connect_stream

    fast = connect_stream(redis_url)
    try:
        return tail.read(fast)
    finally:
        fast.close()


def test_the_console_s_stream_client_decodes_the_same_events_as_a_plain_client(r, keys, redis_url):
    """Given every kind of event and a foreign entry, when read with the console's raw stream client, then the events equal the plain decode."""
    evs = lifecycle(1, T0_MS) + lifecycle(2, T0_MS + 10, fails=3, dead=True)
    xadd(r, keys, evs)
    r.xadd(keys.events, {"something": "else"})
    r.xadd(keys.events, {"type": "log", "ts": "not a number"})
    plain, raw = StreamTail(keys.events, history=0), StreamTail(keys.events, history=0)
    for tail in (plain, raw):
        tail.last_id = "0-0"
    got = _read_with_stream_client(raw, redis_url)
    assert got == plain.read(r) and len(got) == len(evs)
    assert [e.type for e in got] == [e.type for e in evs] and raw.decode_errors == plain.decode_errors == 2


def test_the_console_s_stream_client_shares_data_keys_and_still_reads_what_only_json_reads(r, keys, redis_url):
    """Given events whose data repeat the same keys, and data only Python's json reads (NaN, a lone surrogate),
    when read with the console's stream client, then the key strings are one object each and every value is read."""
    xadd(r, keys, [Event("log", T0_MS + i, data={"level": "info", "message": f"m{i}"}) for i in range(3)])
    r.xadd(keys.events, {"type": "log", "ts": str(T0_MS + 5), "data": '{"level": NaN, "message": "\\ud800"}'})
    tail = StreamTail(keys.events, history=0)
    tail.last_id = "0-0"
    got = _read_with_stream_client(tail, redis_url)
    assert [e.data["message"] for e in got[:3]] == ["m0", "m1", "m2"]
    first, second = (list(e.data) for e in got[:2])
    assert all(a is b for a, b in zip(first, second))  # not a new "level" and "message" per event
    assert got[3].data["level"] != got[3].data["level"] and got[3].data["message"] == "\ud800"  # NaN
    assert tail.decode_errors == 0


def test_after_an_empty_restart_the_tail_reads_the_new_stream_from_its_start(r, keys):
    """Given a tail that has read far, when the stream is recreated with smaller ids, then resync makes it read them."""
    xadd(r, keys, [Event("log", T0_MS + 5000)])
    tail = StreamTail(keys.events, block_ms=10)
    tail.read(r)
    r.delete(keys.events)
    xadd(r, keys, [Event("log", T0_MS + 1, data={"message": "after restart"})])
    tail.resync(r)
    assert [e.data["message"] for e in tail.read(r)] == ["after restart"]


def test_find_trace_collects_one_trace_across_chunks_oldest_first(r, keys):
    """Given two interleaved traces, when searching one with a small chunk, then all of its events come back in order."""
    a, b = lifecycle(1, T0_MS, fails=1), lifecycle(2, T0_MS + 1)
    xadd(r, keys, sorted(a + b, key=lambda e: e.ts))
    got = find_trace(r, keys.events, a[0].trace_id, chunk=3)
    assert [e.type for e in got] == [e.type for e in sorted(a, key=lambda e: e.ts)]


def test_a_snapshot_reads_registries_workers_queues_dead_letters_state_and_cron(r, keys):
    """Given a project's registries and runtime keys in Redis, when a full snapshot is fetched, then each part reads them back."""
    step = {"name": "Tick", "trigger_specs": [{"type": "cron", "expression": "*/5 * * * *"}], "enqueues": []}
    sub = {"name": "Proc", "trigger_specs": [{"type": "queue", "topic": "jobs"}], "enqueues": []}
    r.hset(keys.steps_registry, mapping={"Tick": json.dumps(step), "Proc": json.dumps(sub)})
    r.hset(keys.queues_registry, "jobs", json.dumps({"max_retries": 2, "dead_letter_queue": "jobs.dlq"}))
    r.hset(
        keys.workers,
        "w1",
        json.dumps(
            {"id": "w1", "name": "h:1:worker0", "host": "h", "pid": 1, "queues": {"jobs": 4}, "in_flight": 2, "started_ms": T0_MS}
        ),
    )
    r.zadd(keys.worker_heartbeats, {"w1": T0_MS + 500})
    r.rpush(f"{keys.dramatiq_namespace}:jobs--Proc--high", "a", "b")
    entry = DeadLetter(id="d1", dlq="jobs.dlq", error="boom", topic="jobs", last_failure_ms=T0_MS)
    r.sadd(keys.dlq_names, "jobs.dlq")
    r.zadd(keys.dlq("jobs.dlq"), {"d1": T0_MS})
    r.hset(keys.dlq_entries("jobs.dlq"), "d1", entry.encode())
    StateStore(r, keys).set("orders", "o1", {"status": "new"})
    r.set(keys.cron_last("Tick", "*/5 * * * *"), json.dumps({"scheduled_ms": T0_MS, "fired_ms": T0_MS + 7}))

    snap = fetch(r, keys, Snapshot(), {"registry", "workers", "queues", "dlq", "state", "cron"})
    assert set(snap.steps) == {"Tick", "Proc"} and snap.strategies["jobs"]["max_retries"] == 2
    (w,) = snap.workers
    assert (w.name, w.queues, w.in_flight, w.heartbeat_ms) == ("h:1:worker0", {"jobs": 4}, 2, T0_MS + 500)
    assert snap.queues["jobs"].waiting == 2 and snap.queues["jobs"].by_priority == {"high": 2}
    assert snap.dlq_counts == {"jobs.dlq": 1} and [d.error for d in snap.dead_letters] == ["boom"]
    assert snap.state_groups == {"orders": 1} and snap.state_values == {"o1": {"status": "new"}}
    assert [(c.step, c.expression, c.last_fired_ms) for c in snap.cron] == [("Tick", "*/5 * * * *", T0_MS + 7)]
    assert cron_specs(snap.steps) == [("Tick", "*/5 * * * *")]
    assert snap.loaded == {"registry", "workers", "queues", "dlq", "state", "cron"}


def test_a_partial_snapshot_keeps_the_other_parts(r, keys):
    """Given a snapshot with workers, when only the registry is re-read, then the workers are carried over."""
    r.hset(keys.workers, "w1", json.dumps({"id": "w1"}))
    first = fetch(r, keys, Snapshot(), {"workers"})
    r.delete(keys.workers)
    second = fetch(r, keys, first, {"registry"})
    assert [w.id for w in second.workers] == ["w1"] and second.polls == 2


def test_a_large_state_group_is_read_up_to_the_limit_plus_the_keys_seen_changing(r, keys):
    """Given a group of 3,000 keys, when the State tab's snapshot is read with a limit of 100 and two recently
    changed keys, then it holds at most 100 listed keys plus those two, the group's full count, and no HGETALL ran."""
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.hset(keys.state_group("big"), f"k{i:04d}", json.dumps({"n": i}))
    pipe.sadd(keys.state_groups, "big")
    pipe.execute()
    r.config_resetstat()
    snap = fetch(r, keys, Snapshot(), {"state"}, state_group="big", state_limit=100, state_recent=["k2999", "k0007", "gone"])
    assert snap.state_groups == {"big": 3000}
    assert 100 <= len(snap.state_values) <= 102
    assert (
        snap.state_values["k2999"] == {"n": 2999} and snap.state_values["k0007"] == {"n": 7} and "gone" not in snap.state_values
    )
    assert "cmdstat_hgetall" not in r.info("commandstats")
