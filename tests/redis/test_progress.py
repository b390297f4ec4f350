"""``ctx.progress``: a progress event per call and the trace's latest value in Redis, from real workers."""

from __future__ import annotations

import pytest

from iii_console.core.progress import progress_value, read_progress

from ..helpers import events, wait_for

IMPORT = """
from iii_console import Step, queue
config = Step(name="Import", triggers=[queue("rows")])
def handler(data, ctx):
    for i in range(1, 4):
        ctx.progress(i * 10, 30, note=f"batch {i}")
"""

REPORT = """
from iii_console import Step, queue
config = Step(name="Report", triggers=[queue("reports")])
async def handler(data, ctx):
    await ctx.progress(1, 4)
    try:
        await ctx.progress(5, 4)
    except ValueError as exc:
        ctx.logger.info("refused", reason=str(exc))
    await ctx.progress(2.5, 4, note="halfway")
"""


def test_sync_and_async_handlers_report_progress_as_events_and_the_latest_value(project, runtime, producer, r, keys):
    cfg, steps = project({"import_step.py": IMPORT, "report_step.py": REPORT})
    runtime(cfg, steps)
    p = producer(cfg, steps)
    [imp] = p.enqueue("rows", {}, trace_id="trace-imp")
    [rep] = p.enqueue("reports", {}, trace_id="trace-rep")
    wait_for(lambda: len(events(r, keys, "message.processed")) == 2, what="both processed")
    got = [e for e in events(r, keys, "progress") if e.trace_id == "trace-imp"]
    assert [(e.data["done"], e.data["total"], e.data["note"]) for e in got] == [
        (10, 30, "batch 1"),
        (20, 30, "batch 2"),
        (30, 30, "batch 3"),
    ]
    assert got[-1].data["percent"] == 100.0 and {e.message_id for e in got} == {imp} and {e.step for e in got} == {"Import"}
    latest = read_progress(r, keys, "trace-imp")
    assert latest["done"] == 30 and latest["note"] == "batch 3" and latest["message_id"] == imp and latest["step"] == "Import"
    assert 0 < r.pttl(keys.progress("trace-imp")) <= 86_400_000
    rep_latest = read_progress(r, keys, "trace-rep")
    assert rep_latest["done"] == 2.5 and rep_latest["percent"] == 62.5 and rep_latest["message_id"] == rep
    assert len([e for e in events(r, keys, "progress") if e.trace_id == "trace-rep"]) == 2  # the refused one wrote nothing
    [refused] = [e for e in events(r, keys, "log") if e.trace_id == "trace-rep"]
    assert "done must be between 0 and total" in refused.data["reason"]
    # The progress event is on the stream before the message's processed event.
    order = [e.type for e in events(r, keys) if e.trace_id == "trace-imp"]
    assert order.index("progress") < order.index("message.processed")
    assert read_progress(r, keys, "no-such-trace") is None


@pytest.mark.parametrize(
    "args", [(True, 3), ("1", 3), (1, 0), (-1, 3), (4, 3), (1, float("nan")), (1, 3, 7), (0, 10**400), (0, 2**53 + 1)]
)
def test_bad_progress_values_are_refused_naming_the_argument(args):
    with pytest.raises((TypeError, ValueError), match=r"ctx.progress: (done|total|note)"):
        progress_value(*args)
