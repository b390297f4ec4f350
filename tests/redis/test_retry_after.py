"""``raise Retry(...)``: a handler names when it should run again, on real Redis with a real worker."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from iii_console import Retry
from iii_console.core.dlq import DeadLetterStore

from ..helpers import events, wait_for

SMTP = """
import time
from iii_console import Retry, Step, queue
config = Step(name="Smtp", triggers=[queue("mail")])
def handler(data, ctx):
    ctx.state.update("runs", data["k"], [{{"type": "set", "path": str(ctx.attempt) + "-" + str(int(time.time() * 1000)), "value": ctx.attempt}}])
    n = len(ctx.state.get("runs", data["k"]))
    if n <= data["defer"]:
        {raise_}
"""


def runs(r, keys, k):
    raw = r.hget(keys.state_group("runs"), k)
    return sorted(((int(t.split("-")[1]), a) for t, a in json.loads(raw).items()), key=lambda x: x[0]) if raw else []


def test_retry_after_ms_runs_the_message_again_no_sooner_and_spends_an_attempt(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"smtp_step.py": SMTP.format(raise_="raise Retry(after_ms=600, reason='421 try later')")},
        "queues:\n  mail:\n    max_retries: 5\n    retry_delay: 10\n",
    )
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("mail", {"k": "a", "defer": 2}, trace_id="t")
    wait_for(lambda: len(runs(r, keys, "a")) == 3, what="three runs")
    got = runs(r, keys, "a")
    assert [a for _, a in got] == [1, 2, 3]  # each Retry spent an attempt
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(got)]
    assert all(g >= 590 for g in gaps), gaps  # not the queue's 10 ms backoff
    retrying = [e for e in events(r, keys, "message.retrying") if e.message_id == mid]
    assert [e.data["delay_ms"] for e in retrying] == [600, 600]
    assert all(e.data["retry_after"] and e.data["counts"] for e in retrying)
    assert retrying[0].error == "Retry: 421 try later"


def test_a_retry_that_does_not_count_keeps_its_attempt_past_max_retries(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"smtp_step.py": SMTP.format(raise_="raise Retry(after_ms=50, counts=False)")}, "queues:\n  mail:\n    max_retries: 1\n"
    )
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("mail", {"k": "b", "defer": 4}, trace_id="t")
    wait_for(lambda: len(runs(r, keys, "b")) == 5 and events(r, keys, "message.processed"), what="five runs, then processed")
    assert [a for _, a in runs(r, keys, "b")] == [1, 1, 1, 1, 1]  # max_retries 1 did not stop four deferrals
    assert DeadLetterStore(r, keys).count("dead-letters") == 0
    retrying = [e for e in events(r, keys, "message.retrying") if e.message_id == mid]
    assert len(retrying) == 4 and all(e.data["counts"] is False and e.attempt == 1 for e in retrying)


def test_counted_retries_past_max_retries_dead_letter_the_message(project, runtime, producer, r, keys):
    cfg, steps = project(
        {"smtp_step.py": SMTP.format(raise_="raise Retry(after_ms=20)")},
        "queues:\n  mail:\n    max_retries: 1\n    dead_letter_queue: mail.dlq\n",
    )
    runtime(cfg, steps)
    [mid] = producer(cfg, steps).enqueue("mail", {"k": "c", "defer": 9}, trace_id="t")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("mail.dlq") == 1, what="dead letter")
    [entry] = store.list("mail.dlq")
    assert entry.id == mid and entry.attempts == 2 and entry.error.startswith("Retry:")
    assert len(runs(r, keys, "c")) == 2


def test_retry_at_a_date_from_a_retry_after_header_waits_until_then(project, runtime, producer, r, keys):
    cfg, steps = project(
        {
            "smtp_step.py": SMTP.format(
                raise_="import email.utils; raise Retry.after_header(email.utils.formatdate(time.time() + 2, usegmt=True))"
            )
        }
    )
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("mail", {"k": "d", "defer": 1}, trace_id="t")
    wait_for(lambda: len(runs(r, keys, "d")) == 2, what="second run")
    (t1, _), (t2, _) = runs(r, keys, "d")
    # An HTTP date has whole seconds: due 1-2 s after the first run.
    assert 900 <= t2 - t1 <= 6000, t2 - t1


def test_retry_values_are_checked_and_parsed():
    assert Retry(after_ms=1500).delay_ms() == 1500
    assert Retry.after_header("120").delay_ms() == 120_000
    assert Retry.after_header(3).delay_ms() == 3000
    soon = datetime.now(UTC) + timedelta(seconds=30)
    assert 28_000 <= Retry(at=soon).delay_ms() <= 30_000
    assert Retry(at=datetime.now(UTC) - timedelta(hours=1)).delay_ms() == 0  # past: now
    assert Retry(at=1_000_000, counts=False).delay_ms(now_ms=400_000) == 600_000
    for bad in (
        lambda: Retry(),
        lambda: Retry(after_ms=1, at=2),
        lambda: Retry(after_ms=-1),
        lambda: Retry(at=datetime(2030, 1, 1)),
        lambda: Retry.after_header("soon"),
        lambda: Retry.after_header("-5"),
        lambda: Retry(after_ms=float("inf")),
        lambda: Retry(at=float("inf")),
        lambda: Retry.after_header("Infinity"),
        lambda: Retry.after_header("1e400"),
        lambda: Retry.after_header(float("nan")),
    ):
        with pytest.raises((TypeError, ValueError)):
            bad()
    # Longer than 7 days: capped at 7 days, whichever way the wait is given.
    week = 7 * 86_400_000
    assert Retry(after_ms=8 * 86_400_000).delay_ms() == week
    assert Retry.after_header("700000").delay_ms() == week
    assert Retry.after_header(700000).delay_ms() == week
    assert Retry(at=datetime.now(UTC) + timedelta(days=8)).delay_ms() == week
