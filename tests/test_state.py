"""The state store against real Redis: ops, change records, events, atomicity."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis.asyncio as aredis

from iii_console.core.errors import StateError
from iii_console.core.events import Event
from iii_console.core.state import AsyncStateStore, StateStore, apply_ops


def events(r, keys):
    return [Event.decode(i, f) for i, f in r.xrange(keys.events)]


def test_set_get_list_groups_delete(r, keys):
    s = StateStore(r, keys)
    s.set("messages", "a", {"status": "queued"})
    s.set("messages", "b", {"status": "done"})
    s.set("other", "x", 1)
    assert s.get("messages", "a") == {"status": "queued"}
    assert s.list("messages") == {"a": {"status": "queued"}, "b": {"status": "done"}}
    assert s.groups() == ["messages", "other"]
    assert s.delete("other", "x") == 1
    assert s.get("other", "x") is None
    assert s.groups() == ["messages"]


def test_each_change_is_one_event_and_one_change_record(r, keys):
    s = StateStore(r, keys).bind(trace_id="t1", step="Writer")
    s.set("g", "k", {"n": 1})
    s.set("g", "k", {"n": 1})  # same value: not a change
    s.update("g", "k", [{"type": "increment", "path": "n", "by": 2}])
    s.delete("g", "k")
    evs = events(r, keys)
    assert [e.type for e in evs] == ["state.changed"] * 3
    assert [(e.data["old"], e.data["new"]) for e in evs] == [(None, {"n": 1}), ({"n": 1}, {"n": 3}), ({"n": 3}, None)]
    assert {e.trace_id for e in evs} == {"t1"} and {e.step for e in evs} == {"Writer"}
    assert r.xlen(keys.state_changes) == 3


def test_update_ops_on_paths():
    v = {"status": "queued", "meta": {"a": 1}, "attempts": 0, "error": "x"}
    out = apply_ops(v, [
        {"type": "set", "path": "status", "value": "processing"},
        {"type": "merge", "path": "meta", "value": {"b": 2}},
        {"type": "increment", "path": "attempts", "by": 1},
        {"type": "remove", "path": "error"},
        {"type": "set", "path": "deep.er.x", "value": True},
    ])
    assert out == {"status": "processing", "meta": {"a": 1, "b": 2}, "attempts": 1, "deep": {"er": {"x": True}}}
    assert v["status"] == "queued"  # input untouched


@pytest.mark.parametrize("ops,msg", [
    ([{"type": "increment", "path": "status"}], "not numeric"),
    ([{"type": "explode"}], "unknown update op"),
    ([{"type": "merge", "path": "status", "value": {}}], "must be objects"),
    ([{"type": "set", "path": "status.x", "value": 1}], "not an object"),
])
def test_bad_ops_raise_state_error(ops, msg):
    with pytest.raises(StateError, match=msg):
        apply_ops({"status": "queued"}, ops)


def test_concurrent_increments_lose_nothing(r, keys):
    s = StateStore(r, keys)
    s.set("c", "n", {"v": 0})

    def bump():
        for _ in range(50):
            s.update("c", "n", [{"type": "increment", "path": "v"}])

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.get("c", "n") == {"v": 200}
    assert r.xlen(keys.state_changes) == 201


def test_async_store_matches_sync(redis_url, keys, r):
    async def go():
        client = aredis.Redis.from_url(redis_url)
        s = AsyncStateStore(client, keys, trace_id="t2")
        await s.set("g", "k", {"a": 1})
        await s.update("g", "k", [{"type": "merge", "value": {"b": 2}}])
        got = await s.get("g", "k"), await s.list("g"), await s.groups()
        await s.delete("g", "k")
        await client.aclose()
        return got

    got = asyncio.run(go())
    assert got == ({"a": 1, "b": 2}, {"k": {"a": 1, "b": 2}}, ["g"])
    assert StateStore(r, keys).get("g", "k") is None
    assert [e.trace_id for e in events(r, keys)] == ["t2"] * 3


def test_replace_writes_only_over_the_value_it_expects(r, keys):
    s = StateStore(r, keys)
    assert s.replace("g", "k", None, {"v": 1}) is True  # absent, as expected
    assert s.replace("g", "k", None, {"v": 2}) is False  # no longer absent
    assert s.replace("g", "k", {"v": 9}, {"v": 2}) is False and s.get("g", "k") == {"v": 1}
    assert s.replace("g", "k", {"v": 1}, {"v": 2}) is True and s.get("g", "k") == {"v": 2}
