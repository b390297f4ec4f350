"""``queues.TOPIC.dead_letter_ttl``: dead letters of that topic are dropped once that old; others are kept."""

from __future__ import annotations

import asyncio
import time

from iii_console.core.config import load_config
from iii_console.core.dlq import AsyncDeadLetters, DeadLetter, DeadLetterStore

from ..helpers import wait_for

FAIL = """
from iii_console import Step, queue
config = Step(name="Fail{t}", triggers=[queue("{t}")])
def handler(data, ctx):
    raise RuntimeError("no")
"""


def test_dead_letters_past_their_topics_ttl_are_dropped_and_the_rest_kept(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"a_step.py": FAIL.format(t="a"), "b_step.py": FAIL.format(t="b")},
        """
        queues:
          default: {max_retries: 0}
          a: {dead_letter_ttl: 1000}
        workers: {sweep_interval: 0.2}
    """,
    )
    runtime(cfg, steps)
    p = producer(cfg, steps)
    [a] = p.enqueue("a", {}, trace_id="t")
    [b] = p.enqueue("b", {}, trace_id="t")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("dead-letters") == 2, what="two dead letters")
    t0 = time.monotonic()
    wait_for(lambda: store.get(a) is None, timeout=10, what="a's dead letter expired")
    assert time.monotonic() - t0 >= 0.5  # not before its TTL (both died within a few ms of t0)
    time.sleep(0.5)
    assert store.get(b) is not None and store.count("dead-letters") == 1


def test_dead_letter_ttl_is_validated_with_file_line_and_key(tmp_path):
    f = tmp_path / "iii-config.yaml"
    f.write_text("queues:\n  a:\n    dead_letter_ttl: 5\n")
    try:
        load_config(f)
    except Exception as exc:
        assert f"{f}:3: queues.a.dead_letter_ttl:" in str(exc) and "1000" in str(exc)
    else:
        raise AssertionError("a 5 ms dead_letter_ttl was accepted")


def test_purge_before_deletes_only_entries_that_failed_before_the_time_in_every_queue_or_one(r, keys):
    """Given dead letters in two queues that failed at 1000, 2000 and 3000 ms, when purged before 2500 in one queue and
    then in all (awaited, as async handlers do), then exactly the older entries go, in batches smaller than their
    number, and the count is returned."""
    store = DeadLetterStore(r, keys)
    for dlq, ms in (("a.dlq", 1000), ("a.dlq", 2000), ("a.dlq", 3000), ("b.dlq", 1000), ("b.dlq", 3000)):
        entry = DeadLetter(id=f"{dlq}-{ms}", dlq=dlq, error="boom", last_failure_ms=ms)
        r.hset(keys.dlq_entries(dlq), entry.id, entry.encode())
        r.zadd(keys.dlq(dlq), {entry.id: ms})
        r.sadd(keys.dlq_names, dlq)
    assert store.purge_before(2500, "a.dlq", batch=1) == 2
    assert sorted(e.id for e in store.list()) == ["a.dlq-3000", "b.dlq-1000", "b.dlq-3000"]
    assert asyncio.run(AsyncDeadLetters(store).purge_before(2500)) == 1  # what an async handler's ctx awaits
    assert sorted(e.id for e in store.list()) == ["a.dlq-3000", "b.dlq-3000"]
    assert store.purge_before(2500) == 0


def test_handlers_reach_the_store_as_ctx_dead_letters_sync_and_async(tmp_path, redis_url, r, keys):
    """Given a def and an async def handler, when each purges through ctx.dead_letters, then each deletes the entry
    that failed before the time it gives, in the store the runtime writes."""
    from iii_console.testing import IIISteps

    (tmp_path / "steps").mkdir()
    (tmp_path / "iii-config.yaml").write_text("steps_dir: steps\n")
    (tmp_path / "steps" / "purge_step.py").write_text(
        "from iii_console import Step, queue\n"
        "config = Step(name='Purge', triggers=[queue('purge')])\n"
        "def handler(data, ctx):\n"
        "    return ctx.dead_letters.purge_before(data['before'])\n"
    )
    (tmp_path / "steps" / "apurge_step.py").write_text(
        "from iii_console import Step, queue\n"
        "config = Step(name='APurge', triggers=[queue('apurge')])\n"
        "async def handler(data, ctx):\n"
        "    return [await ctx.dead_letters.purge_before(data['before']), await ctx.dead_letters.count('x.dlq')]\n"
    )
    for entry_id, ms in (("a", 1000), ("b", 2000), ("c", 3000)):
        r.hset(keys.dlq_entries("x.dlq"), entry_id, DeadLetter(id=entry_id, dlq="x.dlq", error="e", last_failure_ms=ms).encode())
        r.zadd(keys.dlq("x.dlq"), {entry_id: ms})
        r.sadd(keys.dlq_names, "x.dlq")
    steps = IIISteps(tmp_path, redis_url)
    try:
        assert steps.run("Purge", {"before": 1500}) == 1
        assert steps.run("APurge", {"before": 2500}) == [1, 1]
    finally:
        steps.stop()


def test_expiry_goes_on_past_entries_that_stay_until_it_has_read_them_all(r, keys):
    """Given one dead-letter queue shared by topic ``b`` (kept) and topic ``a`` (``dead_letter_ttl`` 1 s), with a's
    entries behind more of b's than one sweep reads, when expiry runs sweep after sweep (8 entries each here), then
    each sweep goes on where the last stopped: every a entry is dropped within the sweeps it takes to read them all,
    no b entry is, and the next sweep starts over at the oldest. (Reading the oldest entries only, every sweep
    read the same kept b's and never reached the a's.)"""
    from iii_console.core.dlq import expire

    store = DeadLetterStore(r, keys)
    a_at = {7, 15, 28}
    for ms in range(1, 31):
        topic = "a" if ms in a_at else "b"
        entry = DeadLetter(id=f"{topic}-{ms}", dlq="dead-letters", topic=topic, error="boom", last_failure_ms=ms)
        r.hset(keys.dlq_entries("dead-letters"), entry.id, entry.encode())
        r.zadd(keys.dlq("dead-letters"), {entry.id: ms})
    r.sadd(keys.dlq_names, "dead-letters")
    cursor: dict[str, int] = {}

    def sweep() -> int:
        return expire(store, lambda t: 1000 if t == "a" else None, 100_000, shortest_ms=1000, batch=4, pages=2, cursor=cursor)

    assert [sweep() for _ in range(4)] == [1, 1, 0, 1]
    assert cursor == {"dead-letters": 0}  # read to the end: the next sweep starts at the oldest again
    left = {e.id for e in store.list("dead-letters")}
    assert left == {f"b-{ms}" for ms in range(1, 31) if ms not in a_at}
    assert sweep() == 0 and len(store.list("dead-letters")) == 27
