"""The state store against real Redis: ops, change records, events, atomicity.

Tests taking ``state_store`` run twice, on :class:`StateStore` and on
:class:`AsyncStateStore` (see ``tests/conftest.py``): one suite for both.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis.asyncio as aredis

from iii_console.core.errors import StateError
from iii_console.core.events import Event
from iii_console.core.state import AsyncState, AsyncStateStore, State, StateStore, apply_ops


def events(r, keys):
    return [Event.decode(i, f) for i, f in r.xrange(keys.events)]


def test_set_get_list_groups_delete(state_store, r, keys):
    s = state_store(keys)
    s.set("messages", "a", {"status": "queued"})
    s.set("messages", "b", {"status": "done"})
    s.set("other", "x", 1)
    assert s.get("messages", "a") == {"status": "queued"}
    assert s.list("messages") == {"a": {"status": "queued"}, "b": {"status": "done"}}
    assert s.groups() == ["messages", "other"]
    assert s.delete("other", "x") == 1
    assert s.get("other", "x") is None
    assert s.groups() == ["messages"]


def test_each_change_is_one_event_and_one_change_record(state_store, r, keys):
    r.sadd(keys.state_watched, "g")  # a state step watches g
    s = state_store(keys).bind(trace_id="t1", step="Writer")
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
    out = apply_ops(
        v,
        [
            {"type": "set", "path": "status", "value": "processing"},
            {"type": "merge", "path": "meta", "value": {"b": 2}},
            {"type": "increment", "path": "attempts", "by": 1},
            {"type": "remove", "path": "error"},
            {"type": "set", "path": "deep.er.x", "value": True},
        ],
    )
    assert out == {"status": "processing", "meta": {"a": 1, "b": 2}, "attempts": 1, "deep": {"er": {"x": True}}}
    assert v["status"] == "queued"  # input untouched


@pytest.mark.parametrize(
    "ops,msg",
    [
        ([{"type": "increment", "path": "status"}], "not numeric"),
        ([{"type": "explode"}], "unknown update op"),
        ([{"type": "merge", "path": "status", "value": {}}], "must be objects"),
        ([{"type": "set", "path": "status.x", "value": 1}], "not an object"),
        # The shapes a hand-written op list gets wrong: named, not a TypeError from deep inside.
        ({"type": "set", "path": "a", "value": 1}, "must be a list of ops"),
        (None, "must be a list of ops"),
        ("set", "must be a list of ops"),
        (["set"], "an update op must be an object"),
        ([{"type": "set", "path": 5, "value": 1}], "invalid path 5"),
        ([{"type": "set", "path": {"a": 1}, "value": 1}], "invalid path"),
    ],
)
def test_bad_ops_raise_state_error(ops, msg):
    with pytest.raises(StateError, match=msg):
        apply_ops({"status": "queued"}, ops)


def test_keys_and_values_no_store_can_hold_are_state_errors(r, keys):
    """Given a key holding a lone surrogate (a JSON body can carry one) or a value nested past the encoder's depth,
    when written, then a StateError says so, and nothing is written."""
    from iii_console.core.state import StateStore

    store = StateStore(r, keys)
    for group, key in (("g", "\ud800"), ("\udfff", "k")):
        with pytest.raises(StateError, match="valid Unicode"):
            store.set(group, key, {"v": 1})
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(StateError, match="not JSON-serialisable"):
        store.set("g", "deep", deep)
    assert r.hlen(keys.state_group("g")) == 0


def test_concurrent_increments_lose_nothing(state_store, r, keys):
    r.sadd(keys.state_watched, "c")
    s = state_store(keys)
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


def test_replace_writes_only_over_the_value_it_expects(state_store, r, keys):
    s = state_store(keys)
    assert s.replace("g", "k", None, {"v": 1}) is True  # absent, as expected
    assert s.replace("g", "k", None, {"v": 2}) is False  # no longer absent
    assert s.replace("g", "k", {"v": 9}, {"v": 2}) is False and s.get("g", "k") == {"v": 1}
    assert s.replace("g", "k", {"v": 1}, {"v": 2}) is True and s.get("g", "k") == {"v": 2}


def _recorded(r, keys) -> tuple[int, int]:
    """(state.changed events, trigger records) written so far."""
    return r.xlen(keys.events), r.xlen(keys.state_changes)


@pytest.mark.parametrize(
    "ops,msg",
    [
        ([{"type": "increment", "path": "status"}], "not numeric"),
        ([{"type": "increment", "path": "n", "by": "1"}], "not numeric"),
        ([{"type": "increment", "path": "n", "by": True}], "not numeric"),
        ([{"type": "increment", "path": "n", "by": float("inf")}], "not JSON"),
        ([{"type": "merge", "path": "status", "value": {"a": 1}}], "must be objects"),
        ([{"type": "merge", "path": "meta", "value": [1]}], "must be objects"),
        ([{"type": "set", "path": "status.x", "value": 1}], "not an object"),
        ([{"type": "set", "path": "a..b", "value": 1}], "invalid path"),
        # a valid op before the bad one: the update is all or nothing
        ([{"type": "set", "path": "status", "value": "new"}, {"type": "increment", "path": "status"}], "not numeric"),
    ],
)
def test_a_bad_update_raises_a_clear_error_and_writes_nothing(state_store, r, keys, ops, msg):
    r.sadd(keys.state_watched, "g")
    s = state_store(keys)
    s.set("g", "k", {"status": "queued", "n": 1, "meta": {"a": 0}})
    before = _recorded(r, keys)
    with pytest.raises(StateError, match=msg):
        s.update("g", "k", ops)
    assert s.get("g", "k") == {"status": "queued", "n": 1, "meta": {"a": 0}}
    assert _recorded(r, keys) == before


def test_updates_create_missing_paths_and_keys_and_a_no_op_is_no_change(state_store, r, keys):
    r.sadd(keys.state_watched, "g")
    s = state_store(keys)
    assert s.update("g", "new", [{"type": "increment", "path": "counts.seen"}]) == {"counts": {"seen": 1}}
    assert s.update("g", "new", [{"type": "merge", "path": "meta.tags", "value": {"a": 1}}]) == {
        "counts": {"seen": 1},
        "meta": {"tags": {"a": 1}},
    }
    assert s.update("g", "n", [{"type": "increment", "by": 2.5}]) == 2.5  # empty path: the whole value
    assert _recorded(r, keys) == (3, 3)
    # Nothing to do: removing what is not there (also through a non-object), an update
    # of a missing key that creates nothing, a set or merge to what is already there.
    s.update("g", "new", [{"type": "remove", "path": "missing"}])
    s.update("g", "new", [{"type": "remove", "path": "counts.seen.deeper"}])
    s.update("g", "new", [{"type": "remove", "path": "x.y.z"}])
    assert s.update("g", "absent", [{"type": "remove", "path": "a"}]) is None and s.get("g", "absent") is None
    s.update("g", "new", [{"type": "set", "path": "counts.seen", "value": 1}])
    s.update("g", "new", [{"type": "merge", "path": "meta.tags", "value": {"a": 1}}])
    s.set("g", "new", {"meta": {"tags": {"a": 1}}, "counts": {"seen": 1}})  # same JSON, other key order
    assert s.delete("g", "never-there") is None
    assert _recorded(r, keys) == (3, 3)
    # Removing the whole value deletes the key: one change.
    s.update("g", "n", [{"type": "remove"}])
    assert s.get("g", "n") is None and _recorded(r, keys) == (4, 4)


@pytest.mark.parametrize(
    "group,key",
    [
        ("a:b", "c:d"),
        ("with/slash", "x/y/z"),
        ("ünï cödé ✓", "k e y ✓"),
        ("*", "[x]?"),
        ("g", "line\nbreak"),
        ("state", "groups"),
    ],
)
def test_groups_and_keys_with_special_characters(state_store, r, keys, group, key):
    r.sadd(keys.state_watched, group)
    s = state_store(keys)
    s.set("plain", "k", 1)
    s.set(group, key, {"v": key})
    s.update(group, key, [{"type": "increment", "path": "n"}])
    assert s.get(group, key) == {"v": key, "n": 1}
    assert s.list(group) == {key: {"v": key, "n": 1}} and set(s.groups()) == {"plain", group}
    assert s.list("plain") == {"k": 1}  # no group's hash is another's
    [rec] = [f for _i, f in r.xrange(keys.state_changes) if f[b"key"] == key.encode()][-1:]
    assert rec[b"group"].decode() == group
    assert s.delete(group, key) == {"v": key, "n": 1} and s.groups() == ["plain"]


def test_only_watched_groups_get_trigger_records(state_store, r, keys):
    """A trigger record carries the whole old and new value, so it is kept only
    for groups some state step watches; every change still has its event."""
    r.sadd(keys.state_watched, "watched")
    s = state_store(keys)
    big = {"blob": "x" * 1_000_000}
    for i in range(5):
        s.set("unwatched", "k", {**big, "i": i})
    s.set("watched", "k", {"i": 0})
    assert [f[b"group"] for _i, f in r.xrange(keys.state_changes)] == [b"watched"]
    assert r.xlen(keys.events) == 6
    assert all(len(f[b"data"]) < 10_000 for _i, f in r.xrange(keys.events))  # event data is capped


def test_list_reads_a_large_group_in_pages_and_can_stop_early(state_store, r, keys):
    s = state_store(keys)
    pipe = r.pipeline(transaction=False)
    for i in range(20_000):
        pipe.hset(keys.state_group("big"), f"k{i:05}", f'{{"i": {i}}}')
    pipe.execute()
    r.config_resetstat()
    everything = s.list("big")
    stats = r.info("commandstats")
    assert len(everything) == 20_000 and list(everything)[:2] == ["k00000", "k00001"] and everything["k19999"] == {"i": 19999}
    assert "cmdstat_hgetall" not in stats and stats["cmdstat_hscan"]["calls"] > 5  # pages, not one blocking read
    r.config_resetstat()
    some = s.list("big", limit=50)
    assert len(some) == 50 and all(everything[k] == v for k, v in some.items())
    assert r.info("commandstats")["cmdstat_hscan"]["calls"] == 1


def _increment_in_a_process(url: str, prefix: str, n: int) -> None:
    import redis as _redis

    from iii_console.core.keys import Keys

    s = StateStore(_redis.Redis.from_url(url), Keys(prefix))
    for _ in range(n):
        s.update("c", "n", [{"type": "increment", "path": "v"}, {"type": "increment", "path": "per_op"}])


def test_concurrent_increments_from_processes_lose_nothing(redis_url, r, keys):
    import multiprocessing

    r.sadd(keys.state_watched, "c")
    # Forked from a server that has the store imported already: four interpreters
    # starting from scratch took most of this test's time.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["redis", "iii_console.core.state", "iii_console.core.keys"])
    procs = [ctx.Process(target=_increment_in_a_process, args=(redis_url, keys.prefix, 100)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert StateStore(r, keys).get("c", "n") == {"v": 400, "per_op": 400}
    assert r.xlen(keys.state_changes) == 400  # one record per effective change, none lost or doubled
    news = [Event.decode(i, f).data["new"] for i, f in r.xrange(keys.events)]
    assert sorted(n["v"] for n in news) == list(range(1, 401))


def test_both_stores_offer_the_whole_protocol_and_read_what_the_other_wrote(state_store, r, keys, redis_url):
    s = state_store(keys)
    s.set("g", "a", {"v": 1})
    s.set("g", "b", [1, 2])
    assert s.get_many("g", ["a", "b", "absent"]) == {"a": {"v": 1}, "b": [1, 2]} and s.get_many("g", []) == {}
    assert StateStore(r, keys).list("g") == {"a": {"v": 1}, "b": [1, 2]}
    sync_methods = {m for m in dir(State) if not m.startswith("_")}
    assert sync_methods == {m for m in dir(AsyncState) if not m.startswith("_")}
    assert isinstance(StateStore(r, keys), State)
    assert isinstance(AsyncStateStore(aredis.Redis.from_url(redis_url), keys), AsyncState)
    assert all(callable(getattr(s, m)) for m in sync_methods)
