"""``queues.TOPIC.dead_letter_ttl``: dead letters of that topic are dropped once that old; others are kept."""

from __future__ import annotations

import time

from iii_console.core.config import load_config
from iii_console.core.dlq import DeadLetterStore

from .helpers import wait_for

FAIL = """
from iii_console import Step, queue
config = Step(name="Fail{t}", triggers=[queue("{t}")])
def handler(data, ctx):
    raise RuntimeError("no")
"""


def test_dead_letters_past_their_topics_ttl_are_dropped_and_the_rest_kept(project, runtime, producer, r, keys):
    cfg, steps = project({"a_step.py": FAIL.format(t="a"), "b_step.py": FAIL.format(t="b")}, """
        queues:
          default: {max_retries: 0}
          a: {dead_letter_ttl: 1000}
        workers: {sweep_interval: 0.2}
    """)
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
