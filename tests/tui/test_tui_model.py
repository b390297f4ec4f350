"""The console's data, without a screen: counters, message rows, traces, filters, bounds."""

from __future__ import annotations

from iii_console.core.events import Event
from iii_console.tui.filter import EventFilter
from iii_console.tui.model import ConsoleModel, RateSeries

from ..helpers import T0_MS, lifecycle

NOW = T0_MS + 60_000


def test_rates_count_by_event_time_over_whole_seconds():
    """Given 10 events in each of the last 5 complete seconds, when asked for the rate, then it is 10/s and the series shows them."""
    series = RateSeries()
    for sec in range(5):
        for _ in range(10):
            series.add(NOW - (5 - sec) * 1000, NOW)
    assert series.total == 50
    assert series.rate(NOW) == 10.0
    assert series.series(NOW, 6) == [10, 10, 10, 10, 10, 0]


def test_an_event_from_a_clock_running_ahead_counts_now_not_in_the_future():
    """Given an event stamped a minute ahead of now, when counted, then it lands in the current second."""
    series = RateSeries()
    series.add(NOW + 60_000, NOW)
    assert series.series(NOW, 1) == [1]


def test_a_message_row_follows_its_lifecycle_through_retries_to_processed():
    """Given a message that fails twice then succeeds, when its events are ingested, then its row is processed after 3 attempts."""
    m = ConsoleModel()
    m.ingest(lifecycle(1, T0_MS, fails=2), NOW)
    (row,) = m.messages.values()
    assert (row.status, row.attempts, row.topic, row.step) == ("processed", 3, "message.sent", "ProcessMessage")
    assert row.error == "RuntimeError: simulated failure on attempt 2"
    assert m.tiles["failed"].total == 2 and m.tiles["retrying"].total == 2 and m.tiles["processed"].total == 1


def test_status_follows_the_furthest_point_reached_even_when_events_arrive_out_of_order():
    """Given a worker's 'started' read before the producer's 'enqueued', when both are ingested, then the row stays running."""
    evs = lifecycle(1, T0_MS)
    enqueued = next(e for e in evs if e.type == "message.enqueued")
    started = next(e for e in evs if e.type == "message.started")
    m = ConsoleModel()
    m.ingest([started, enqueued], NOW)
    row = m.messages[started.message_id]
    assert row.status == "running" and row.priority == "normal"
    assert m.in_flight == 1


def test_a_dead_lettered_message_is_dead_with_all_its_attempts():
    """Given a message that fails every attempt, when ingested, then it is dead, counted, and listed as a problem."""
    m = ConsoleModel()
    m.ingest(lifecycle(1, T0_MS, fails=3, dead=True), NOW)
    (row,) = m.messages.values()
    assert (row.status, row.attempts) == ("dead", 3)
    assert m.topics["message.sent"].dead == 1
    assert [e.event.type for e in m.problems].count("message.dead_lettered") == 1


def test_a_trace_holds_every_event_that_shares_its_id_in_time_order():
    """Given two interleaved messages, when ingested, then each trace lists only its own events, oldest first."""
    a, b = lifecycle(1, T0_MS, fails=1), lifecycle(2, T0_MS + 1)
    m = ConsoleModel()
    m.ingest(sorted(a + b, key=lambda e: e.ts), NOW)
    got = m.traces.get(a[0].trace_id)
    assert got is not None and [e.type for e in got] == [e.type for e in sorted(a, key=lambda e: e.ts)]
    assert m.traces.find(b[0].trace_id[:6]) == b[0].trace_id


def test_every_buffer_stays_bounded_however_many_events_arrive():
    """Given 3,000 messages (24,000 events), when ingested, then log, rows, traces and problems stay within their caps."""
    m = ConsoleModel(log_size=1000, max_messages=500, max_traces=400)
    for n in range(3000):
        m.ingest(lifecycle(n, T0_MS + n, fails=n % 3 == 0), NOW)
    assert m.seq == 24_000
    assert len(m.log) == 1000 and len(m.messages) == 500 and len(m.traces) == 400
    assert len(m.problems) <= m.problems.maxlen
    assert m.tiles["enqueued"].total == 3000  # counters still count everything
    assert 0 <= m.in_flight <= 500


def test_long_traces_state_groups_and_step_errors_are_bounded_too():
    """Given long traces, thousands of state groups and ever-new step errors, when ingested, then each container stays capped."""
    m = ConsoleModel(max_traces=100, max_step_errors=20, max_state_groups=30)
    m.traces.max_total = 1000
    for n in range(50):
        m.ingest([Event("log", T0_MS + i, f"trace{n:03d}", data={"message": str(i)}) for i in range(200)], NOW)
    assert m.traces.total <= 1000 and sum(len(m.traces.get(t) or []) for t in m.traces._traces) == m.traces.total
    assert m.traces.get("trace049") is not None and m.traces.get("trace000") is None  # the oldest went first
    m.ingest([Event("state.changed", T0_MS + n, step="S", data={"group": f"g{n}", "key": "k"}) for n in range(500)], NOW)
    assert len(m.state_changes) == 30 and len(m.state_writers) <= 30 and "g499" in m.state_changes
    m.ingest([Event("step.error", T0_MS + n, step="S", error=f"boom {n}", data={"file": "s.py"}) for n in range(500)], NOW)
    assert len(m.step_errors) == 20


def test_ever_new_topics_cron_steps_and_state_writers_are_bounded_too():
    """Given thousands of distinct topics, cron steps and writers of one state group, when ingested, then each
    container keeps at most ``max_names``, the most recently seen."""
    m = ConsoleModel(max_names=50)
    for n in range(2000):
        m.ingest(
            [
                Event("message.enqueued", T0_MS + n, f"t{n}", message_id=f"m{n}", topic=f"topic{n}"),
                Event("cron.fired", T0_MS + n, step=f"Cron{n}", data={"drift_ms": 1}),
                Event("state.changed", T0_MS + n, step=f"Writer{n}", data={"group": "g", "key": "k"}),
            ],
            NOW,
        )
    assert len(m.topics) == 50 and "topic1999" in m.topics and "topic0" not in m.topics
    assert len(m.cron) == 50 and m.cron["Cron1999"].fired == 1
    assert len(m.state_writers["g"]) == 50
    m.ingest([Event("message.processed", T0_MS + 3000, "t", message_id="m1950", topic="topic1950")], NOW)
    m.ingest([Event("message.enqueued", T0_MS + 3001, "t", message_id="x", topic="new")], NOW)
    assert "topic1950" in m.topics and "topic1951" not in m.topics  # a topic seen again is kept longer


def test_log_since_returns_only_new_entries_and_survives_the_buffer_wrapping():
    """Given a full log, when asking for entries after a sequence number that fell out, then what is still buffered comes back."""
    m = ConsoleModel(log_size=10)
    m.ingest([Event("log", T0_MS + i, data={"message": str(i)}) for i in range(25)], NOW)
    assert [e.seq for e in m.log_since(22)] == [23, 24, 25]
    assert [e.seq for e in m.log_since(3)] == list(range(16, 26))
    assert m.log_since(25) == []


def test_filter_tokens_match_type_prefix_topic_step_trace_and_words():
    """Given a failure and a success, when filtering by several fields, then only matching events pass."""
    evs = lifecycle(1, T0_MS, fails=1)
    failed = next(e for e in evs if e.type == "message.failed")
    processed = next(e for e in evs if e.type == "message.processed")
    assert EventFilter.parse("type:message.f").matches(failed)
    assert not EventFilter.parse("type:message.f").matches(processed)
    assert EventFilter.parse("type:message.failed,message.processed").matches(processed)
    assert EventFilter.parse("topic:message.* step:process").matches(processed)
    assert EventFilter.parse(f"trace:{failed.trace_id[:6]} simulated").matches(failed)
    assert not EventFilter.parse("simulated").matches(processed)
    assert not EventFilter.parse("step:Notify").matches(failed)
    assert not EventFilter.parse("   ")  # an empty filter is falsy: everything shows


def test_message_rows_filter_by_status():
    """Given one processed and one dead message, when filtering rows by status, then only the dead one is listed."""
    m = ConsoleModel()
    m.ingest(lifecycle(1, T0_MS) + lifecycle(2, T0_MS + 5, fails=2, dead=True), NOW)
    rows = m.message_rows(EventFilter.parse("status:dead"))
    assert [r.status for r in rows] == ["dead"]
    assert [r.message_id for r in m.message_rows()] == list(reversed(m.messages))  # newest first


def test_message_rows_free_text_matches_the_payload_sent_within_a_bound():
    """Given messages sent with different texts, when filtering by a word of one text, then that message is listed."""
    m = ConsoleModel()
    m.ingest(lifecycle(1, T0_MS, text="Bonjour Alice") + lifecycle(2, T0_MS + 5, text="hello bob"), NOW)
    rows = m.message_rows(EventFilter.parse("alice"))
    assert [r.message_id for r in rows] == [lifecycle(1, T0_MS)[2].message_id]
    assert m.message_rows(EventFilter.parse("status:processed bob"))[0].message_id == lifecycle(2, T0_MS)[2].message_id
    big = lifecycle(3, T0_MS + 9, text="x" * 10_000 + " needle")
    m.ingest(big, NOW)
    assert len(m.messages[big[2].message_id or ""].payload) <= 4096  # bounded: the far end is not kept
    assert not m.message_rows(EventFilter.parse("needle"))


def test_state_changes_remember_recent_keys_and_who_wrote_them():
    """Given state.changed events, when ingested, then the group's keys are ordered by change and writers are known."""
    m = ConsoleModel()
    m.ingest(lifecycle(1, T0_MS) + lifecycle(2, T0_MS + 100), NOW)
    assert list(m.state_recent("messages")) == ["rec00001", "rec00002"]
    assert m.state_writers["messages"] == {"SendMessage", "ProcessMessage"}


def test_step_errors_are_kept_until_the_config_is_reloaded():
    """Given a step load error, when a config.reloaded event follows, then the error is cleared."""
    m = ConsoleModel()
    err = Event(
        "step.error",
        T0_MS,
        step="Broken",
        error="steps/broken_step.py:3: config.triggers: field required",
        data={"file": "steps/broken_step.py", "line": 3, "field": "triggers", "message": "field required"},
    )
    m.ingest([err], NOW)
    assert list(m.step_errors.values()) == [err]
    m.ingest([Event("config.reloaded", T0_MS + 10)], NOW)
    assert not m.step_errors


def test_step_errors_stay_through_a_failed_reload_and_clear_on_a_good_one():
    """Given two broken files at start, when a reload fixes one but not the other, then the console still shows the
    one it reports again (the failed config.reloaded follows its step.error events); when a reload succeeds, none."""
    a = "steps/a_step.py, step 'A', field 'name': bad"
    b = "steps/b_step.py, step 'B', field 'triggers.0.topic': Field required"
    m = ConsoleModel()
    m.ingest(
        [
            Event("step.error", T0_MS, step="A", error=a, data={"file": "steps/a_step.py"}),
            Event("step.error", T0_MS, step="B", error=b, data={"file": "steps/b_step.py"}),
        ],
        NOW,
    )
    assert len(m.step_errors) == 2
    m.ingest(
        [
            Event("step.error", T0_MS + 1, step="B", error=b, data={"file": "steps/b_step.py"}),
            Event("config.reloaded", T0_MS + 1, error="1 step file(s) have errors", data={"ok": False, "errors": [b]}),
        ],
        NOW,
    )
    assert [e.error for e in m.step_errors.values()] == [b]
    m.ingest([Event("config.reloaded", T0_MS + 2, data={"ok": True, "steps": ["A", "B"]})], NOW)
    assert not m.step_errors


def test_a_redelivered_message_shows_the_redelivery_between_its_two_starts():
    """Given a message whose worker died mid-run, when its events are ingested (start, redelivered, start, processed),
    then its row goes running → redelivered → running → processed, its trace shows the redelivery between the two
    starts naming the dead worker, and the redelivery is listed among the problems."""
    from iii_console.format import detail

    base = dict(message_id="m1", trace_id="t1", step="Work", topic="jobs", queue="jobs--Work--normal")
    m = ConsoleModel()
    m.ingest(
        [
            Event("message.enqueued", ts=T0_MS, **base),
            Event("message.started", ts=T0_MS + 1, attempt=1, worker="h:1:worker0", **base),
        ],
        NOW,
    )
    assert m.messages["m1"].status == "running"
    back = Event(
        "message.redelivered",
        ts=T0_MS + 2,
        worker="h:1:worker0",
        data={"reason": "crashed", "deliveries": 1, "worker_id": "w-1", "by": "h:9:supervisor"},
        **base,
    )
    m.ingest([back], NOW)
    assert m.messages["m1"].status == "redelivered" and m.in_flight == 0
    m.ingest([Event("message.started", ts=T0_MS + 3, attempt=1, worker="h:2:worker1", **base)], NOW)
    assert m.messages["m1"].status == "running"
    m.ingest([Event("message.processed", ts=T0_MS + 4, attempt=1, worker="h:2:worker1", duration_ms=1.0, **base)], NOW)
    assert m.messages["m1"].status == "processed"
    trace = [e.type for e in m.traces.get("t1") or []]
    assert trace == ["message.enqueued", "message.started", "message.redelivered", "message.started", "message.processed"]
    assert detail(back).startswith("crashed: h:1:worker0 held it")
    assert any(p.event.type == "message.redelivered" for p in m.problems)


def test_the_workers_view_names_a_crashed_process_signal_and_what_it_gave_back():
    """Given a worker.stopped from a supervisor's recovery, when it is shown, then the line names the signal and the count."""
    from iii_console.tui.tabs.system import worker_line

    ev = Event(
        "worker.stopped",
        ts=T0_MS,
        worker="h:9:supervisor",
        data={"id": "0123456789", "reason": "crashed", "signal": "SIGKILL", "requeued": 3},
    )
    text = worker_line(ev).plain
    assert "crashed" in text and "SIGKILL" in text and "gave back 3" in text


#: Where the throttle tests' message runs.
MAIL = dict(message_id="m1", trace_id="t1", step="Mail", topic="mails", queue="mails--Mail--normal")


def _throttled(ts: int, **data) -> Event:
    """A ``message.throttled`` of the mail on key ``acme`` (limit 3), its ``data`` completed by ``data``."""
    return Event("message.throttled", ts=ts, attempt=1, data={"key": "acme", "reason": "limit", "limit": 3, **data}, **MAIL)


def test_throttled_messages_progress_and_groups_show_in_the_console():
    """Given a message throttled on a key, then started with progress reported, and a completed group, when the
    events are ingested, then the row goes throttled → running with its progress, the Queues view can list what
    waits on which key, and each event reads as one line."""
    from iii_console.format import detail
    from iii_console.tui.tabs.messages import _duration

    base = MAIL
    m = ConsoleModel()
    throttled = _throttled(T0_MS + 1, wait_ms=400, period_ms=1000)
    m.ingest([Event("message.enqueued", ts=T0_MS, **base), throttled], NOW)
    assert m.messages["m1"].status == "throttled" and m.throttled() == {"mails": {"acme": 1}}
    progress = Event("progress", ts=T0_MS + 3, data={"done": 3, "total": 10, "percent": 30.0, "note": "rows"}, **base)
    m.ingest([Event("message.started", ts=T0_MS + 2, attempt=1, **base), progress], NOW)
    row = m.messages["m1"]
    assert row.status == "running" and row.progress == (3.0, 10.0) and m.throttled() == {}
    assert _duration(row).plain == "██░░░ 30%"
    assert detail(throttled) == "key acme: over limit; waits 400 ms (attempt not spent)"
    assert detail(progress) == "███░░░░░░░ 3/10 rows"
    for data, how in [
        ({"delay_ms": 500}, ""),
        ({"delay_ms": 500, "retry_after": True, "counts": True}, " (Retry)"),
        ({"delay_ms": 500, "retry_after": True, "counts": False}, " (Retry, attempt not spent)"),
        ({"delay_ms": 500, "counts": False, "store_unreachable": True}, " (Redis unreachable, attempt not spent)"),
        ({"delay_ms": 500, "counts": False, "store_refuses_writes": True}, " (Redis refuses writes, attempt not spent)"),
    ]:
        assert detail(Event("message.retrying", ts=T0_MS, attempt=2, data=data, **base)) == f"attempt 2 in 500 ms{how}"
    done = Event("group.completed", ts=T0_MS, trace_id="t1", data={"group_id": "g", "total": 4, "ok": 2, "failed": 1, "dead": 1})
    assert detail(done) == "group g: 2 ok, 1 failed, 1 dead of 4"
    assert [e.type for e in m.traces.get("t1") or []][-1] == "progress"


def test_a_run_sent_back_to_wait_at_its_start_shows_as_throttled_then_runs_again():
    """Given a message whose run started and was then sent back to its throttle (it started too late for its
    admission and the key's window was full), when the events are ingested, then the row reads throttled, not
    running, and its next start and settle move it on as usual."""
    from iii_console.format import detail

    base = MAIL
    m = ConsoleModel()
    back = _throttled(T0_MS + 900, wait_ms=120, period_ms=600, at_start=True)
    m.ingest(
        [Event("message.enqueued", ts=T0_MS, **base), Event("message.started", ts=T0_MS + 800, attempt=1, **base), back], NOW
    )
    assert m.messages["m1"].status == "throttled" and m.throttled() == {"mails": {"acme": 1}}
    assert detail(back) == "key acme: over limit at its start; waits 120 ms (attempt not spent)"
    m.ingest([Event("message.started", ts=T0_MS + 1100, attempt=1, **base)], NOW)
    assert m.messages["m1"].status == "running"
    m.ingest([Event("message.processed", ts=T0_MS + 1101, attempt=1, duration_ms=1.0, **base)], NOW)
    assert (m.messages["m1"].status, m.messages["m1"].attempts) == ("processed", 1)


def test_a_fan_in_group_shows_its_children_settled_then_its_completion():
    """Given a group of two children enqueued, one processed, when the last is dead-lettered and the group
    completes, then the console's group goes 0/2 → 1/2 → done with the completion's counts."""
    m = ConsoleModel()
    kids = [dict(message_id=f"c{i}", trace_id="t", step="Part", topic="parts", queue="parts--Part--normal") for i in (1, 2)]
    m.ingest([Event("message.enqueued", ts=T0_MS, data={"payload": {}, "group_id": "g1"}, **k) for k in kids], NOW)
    assert (m.groups["g1"].total, m.groups["g1"].settled) == (2, 0)
    m.ingest([Event("message.processed", ts=T0_MS + 1, attempt=1, **kids[0])], NOW)
    m.ingest([Event("message.processed", ts=T0_MS + 1, attempt=1, **kids[0])], NOW)  # seen twice: settled once
    assert m.groups["g1"].settled == 1 and m.groups["g1"].done is None
    m.ingest(
        [
            Event("message.dead_lettered", ts=T0_MS + 2, attempt=1, data={"dlq": "d", "attempts": 1}, **kids[1]),
            Event(
                "group.completed",
                ts=T0_MS + 2,
                trace_id="t",
                data={"group_id": "g1", "total": 2, "ok": 1, "failed": 0, "dead": 1},
            ),
        ],
        NOW,
    )
    assert m.groups["g1"].settled == 2 and m.groups["g1"].done["dead"] == 1


def test_a_traces_events_in_one_millisecond_keep_stream_order_past_nine() -> None:
    """Entry ids compare as numbers: ``…-10`` comes after ``…-9``, not between ``…-1`` and ``…-2``."""
    from iii_console.core.events import Event, order_key
    from iii_console.tui.model import TraceIndex

    events = [Event(type="log", ts=5, trace_id="t", id=f"5-{i}") for i in (10, 2, 9, 1, 11)]
    assert [e.id for e in sorted(events, key=order_key)] == ["5-1", "5-2", "5-9", "5-10", "5-11"]
    index = TraceIndex()
    for rev, ev in enumerate(events):
        index.add(ev, rev)
    assert [e.id for e in index.get("t") or []] == ["5-1", "5-2", "5-9", "5-10", "5-11"]
