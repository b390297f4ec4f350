"""Queues (depth, throughput, strategy) and Dead letters (entries with their error)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from iii_console.core.dlq import DeadLetter
from iii_console.core.text import first_line
from iii_console.tui import fmt
from iii_console.tui.messages import DeadLettersChosen, InspectDeadLetter, OpenTrace
from iii_console.tui.model import TopicCounts
from iii_console.tui.widgets import Pane, Table, View, cursor_key, lines, n, retitle, t

QUEUE_COLUMNS = (
    ("Topic", 24),
    ("Subscribers", 18),
    ("Waiting", 7),
    ("h / n / l", 11),
    ("Delayed", 7),
    ("In flight", 9),
    ("Processed/s", 11),
    ("Processed", 9),
    ("Failed", 6),
    ("Retried", 7),
    ("Dead", 5),
    ("Dead-letter queue", None),
)
STRATEGY_COLUMNS = (
    ("Topic", 24),
    ("Retries", 7),
    ("First retry", 11),
    ("Backoff", 11),
    ("Max delay", 9),
    ("Concurrency", 11),
    ("Priority", 8),
    ("Dead-letter queue", 22),
    ("Source", None),
)


def strategy_cells(topic: str, s: dict[str, Any], source: str) -> tuple[Text, ...]:
    return (
        t(topic, "bold" if not topic.startswith("_") else "bright_black"),
        n(s.get("max_retries")),
        t(fmt.duration(float(s.get("retry_delay", 0))), justify="right"),
        t(s.get("backoff")),
        t(fmt.duration(float(s["max_retry_delay"])) if "max_retry_delay" in s else "-", justify="right"),
        n(s.get("concurrency")),
        t(s.get("priority", "normal"), fmt.PRIORITY_STYLE.get(s.get("priority", "normal"), "")),
        t(s.get("dead_letter_queue"), "red"),
        t(source, "bright_black" if source.startswith("default") else ""),
    )


def subscribers(view: View, topic: str) -> list[str]:
    """Steps subscribed to ``topic``; ``_cron.X`` and ``_state.X`` carry step X's own triggers."""
    if topic.startswith(("_cron.", "_state.")):
        return [topic.split(".", 1)[1]]
    st = view.snap.queues.get(topic)
    if st and st.steps:
        return sorted(st.steps)
    return sorted(
        name
        for name, s in view.snap.steps.items()
        if any(sp.get("type") == "queue" and sp.get("topic") == topic for sp in s.get("trigger_specs", []))
    )


def known_topics(view: View) -> list[str]:
    snap = view.snap
    topics = set(snap.queues) | set(view.model.topics) | (set(snap.strategies) - {"default"})
    for name, s in snap.steps.items():
        for spec in s.get("trigger_specs", []):
            if spec.get("type") == "cron":
                topics.add(f"_cron.{name}")
            elif spec.get("type") == "state":
                topics.add(f"_state.{name}")
    return sorted(topics, key=lambda x: (x.startswith("_"), x))


class QueuesPane(Pane):
    wants = frozenset({"queues"})

    DEFAULT_CSS = """
    QueuesPane #queues-table { height: auto; min-height: 5; max-height: 60%; }
    QueuesPane #strategies-table { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Table(QUEUE_COLUMNS, title="Queues", id="queues-table")
        yield Table(STRATEGY_COLUMNS, title="Strategies", id="strategies-table")

    def show(self, view: View) -> None:
        snap, m = view.snap, view.model
        table = self.query_one("#queues-table", Table)
        if "queues" not in snap.loaded:
            retitle(table, subtitle="loading…")
            return
        default = snap.strategies.get("default") or {}
        rows, strategies = [], []
        shared = snap.broker_delayed is not None
        for topic in known_topics(view):
            st = snap.queues.get(topic)
            tc = m.topics.get(topic) or TopicCounts()
            configured = topic in snap.strategies
            strat = snap.strategies.get(topic, default)
            dlq_name = strat.get("dead_letter_queue")
            dlq_n = snap.dlq_counts.get(dlq_name, 0) if dlq_name else 0
            prio = st.by_priority if st else {}
            r = tc.processed.rate(view.now_ms)
            subs = subscribers(view, topic)
            rows.append(
                (
                    topic,
                    (
                        t(topic, "bold" if not topic.startswith("_") else "bright_black"),
                        t(", ".join(subs) or "none", "" if subs else "bold red"),
                        n(st.waiting if st else 0, "bold yellow"),
                        t(
                            f"{prio.get('high', 0)} / {prio.get('normal', 0)} / {prio.get('low', 0)}",
                            "bright_black",
                            justify="right",
                        ),
                        # On RabbitMQ, delays wait in queues shared by every topic: the total is in the subtitle.
                        t("-", "bright_black", justify="right") if shared else n(st.delayed if st else 0, "dark_orange"),
                        n(st.in_flight if st else 0, "yellow"),
                        t(fmt.rate(r), "green" if r else "bright_black", justify="right"),
                        n(tc.processed.total, "green"),
                        n(tc.failed, "red"),
                        n(tc.retrying, "dark_orange"),
                        n(tc.dead, "bold red"),
                        t(f"{dlq_name} ({dlq_n})" if dlq_name else "-", "bold red" if dlq_n else "bright_black"),
                    ),
                )
            )
            strategies.append(
                (topic, strategy_cells(topic, strat, f"queues.{topic}" if configured else "default (not configured)"))
            )
        table.show_rows(rows)
        retitle(table, title=f"Queues ({len(rows)})")
        sub = "depths every second · h/n/l: waiting by priority · counts since the console started"
        if shared:
            sub += f" · delayed (retries, delayed sends; all topics, in {snap.broker}'s delay queues): {snap.broker_delayed}"
        waiting = m.throttled()
        if waiting:  # messages over a per-key throttle, and the keys they wait on
            sub += " · throttled: " + "; ".join(
                f"{topic} " + ", ".join(f"{k}×{c}" for k, c in sorted(keys.items(), key=lambda kv: -kv[1])[:5])
                for topic, keys in sorted(waiting.items())
            )
        retitle(table, subtitle=sub)
        st_table = self.query_one("#strategies-table", Table)
        if default:
            strategies.append(("default", strategy_cells("(default)", default, "queues.default")))
        st_table.show_rows(strategies)
        retitle(st_table, subtitle="retries, then the dead-letter queue")


DLQ_COLUMNS = (
    ("Failed", 8),
    ("DLQ", 20),
    ("Topic", 18),
    ("Step", 18),
    ("Att", 4),
    ("Priority", 8),
    ("Trace", 9),
    ("Error", None),
)


def dead_letter_text(e: DeadLetter) -> Text:
    """Everything a person needs to decide between replay and purge."""
    return lines(
        [
            Text.assemble(
                ("entry ", "bright_black"),
                (fmt.plain(e.id), "bold"),
                ("  message ", "bright_black"),
                fmt.plain(e.message_id or "-"),
                ("  trace ", "bright_black"),
                fmt.plain(e.trace_id or "-"),
            ),
            Text.assemble(
                ("dlq ", "bright_black"),
                (fmt.plain(e.dlq), "bold red"),
                ("  topic ", "bright_black"),
                fmt.plain(e.topic),
                ("  step ", "bright_black"),
                fmt.plain(e.step),
                ("  attempts ", "bright_black"),
                str(e.attempts),
                ("  first failure ", "bright_black"),
                fmt.hms(e.first_failure_ms),
                ("  last ", "bright_black"),
                fmt.hms(e.last_failure_ms),
            ),
            Text.assemble(("error ", "bright_black"), (fmt.plain(e.error, keep_lines=True), "bold red")),
            Text("payload", style="bright_black"),
            Text(fmt.pretty_json(e.data) if e.raw is None else fmt.plain(e.raw, keep_lines=True)),
            Text("traceback", style="bright_black"),
            Text(fmt.plain(e.traceback.rstrip(), keep_lines=True) or "-", style="red"),
        ]
    )


class DeadLettersPane(Pane):
    wants = frozenset({"dlq"})
    writes = frozenset({"replay", "replay_shown", "purge", "purge_shown"})
    BINDINGS = [
        Binding("i", "inspect", "Inspect"),
        Binding("r", "replay", "Replay"),
        Binding("R", "replay_shown", "Replay shown", key_display="R"),
        Binding("d", "purge", "Purge"),
        Binding("D", "purge_shown", "Purge shown", key_display="D"),
        Binding("r,R,d,D", "app.read_only", show=False),  # what those keys do on a read-only console
    ]

    DEFAULT_CSS = """
    DeadLettersPane #dlq-table { height: auto; min-height: 5; max-height: 45%; }
    DeadLettersPane #dlq-detail-box { height: 1fr; border: round $error 60%; }
    DeadLettersPane #dlq-detail { padding: 0 1; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._entries: dict[str, DeadLetter] = {}
        self._shown: str | None = "-"
        self._filter_text = ""
        self._truncated = False

    def compose(self) -> ComposeResult:
        yield Table(DLQ_COLUMNS, title="Dead letters", id="dlq-table")
        with VerticalScroll(id="dlq-detail-box") as box:
            retitle(box, title="Entry")
            yield Static("", id="dlq-detail")

    def show(self, view: View) -> None:
        table = self.query_one(Table)
        if "dlq" not in view.snap.loaded:
            retitle(table, subtitle="loading…")
            return
        flt = view.filter
        entries = [
            e
            for e in view.snap.dead_letters
            if not flt
            or flt.matches_values(
                type="message.dead_lettered",
                topic=e.topic,
                step=e.step,
                trace=e.trace_id,
                status="dead",
                text=(e.error, e.dlq, e.id),
            )
        ]
        self._entries = {e.id: e for e in entries}
        self._filter_text = flt.text if flt else ""
        total = sum(view.snap.dlq_counts.values())
        self._truncated = len(view.snap.dead_letters) < total
        table.show_rows(
            [
                (
                    e.id,
                    (
                        t(fmt.ago(e.last_failure_ms, view.now_ms), justify="right"),
                        t(e.dlq, "bold red"),
                        t(e.topic),
                        t(e.step),
                        n(e.attempts),
                        t(e.priority, fmt.PRIORITY_STYLE.get(e.priority, "")),
                        t(e.trace_id[:8], "bright_black"),
                        t(first_line(e.error or ""), "red"),
                    ),
                )
                for e in entries
            ]
        )
        retitle(table, title=f"Dead letters ({total})" + (f" · filter: {flt.text}" if flt else ""))
        retitle(table, subtitle="  ".join(f"{k}: {v}" for k, v in sorted(view.snap.dlq_counts.items())) or "none")
        self._detail(cursor_key(table))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._detail(event.row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        e = self._entries.get(event.row_key.value or "")
        if e is not None and e.trace_id:
            self.post_message(OpenTrace(e.trace_id, e.message_id))

    def _detail(self, key: str | None) -> None:
        e = self._entries.get(key or "")
        key = e.id if e is not None else None
        if key == self._shown:
            return
        self._shown = key
        if e is None:
            text = Text(
                "No dead letters: every message that ran out of retries would be listed here with its error and traceback.",
                style="green",
            )
        else:
            keys = "enter: open the message's trace · i: inspect"
            if not self.read_only:
                keys += " · r: replay · d: purge · R / D: replay / purge every entry shown"
            text = lines([dead_letter_text(e), Text(keys, style="bright_black italic")])
        self.query_one("#dlq-detail", Static).update(text)

    def _selected(self) -> DeadLetter | None:
        e = self._entries.get(cursor_key(self.query_one(Table)) or "")
        if e is None:
            self.notify("No dead letter is highlighted.", severity="warning")
        return e

    def action_inspect(self) -> None:
        if (e := self._selected()) is not None:
            self.post_message(InspectDeadLetter(e))

    def action_replay(self) -> None:
        if (e := self._selected()) is not None:
            self.post_message(DeadLettersChosen("replay", (e,), scope=f"the highlighted entry {e.id}"))

    def action_purge(self) -> None:
        if (e := self._selected()) is not None:
            self.post_message(DeadLettersChosen("purge", (e,), scope=f"the highlighted entry {e.id}"))

    def action_replay_shown(self) -> None:
        self.post_message(DeadLettersChosen("replay", tuple(self._entries.values()), scope=self._scope()))

    def action_purge_shown(self) -> None:
        self.post_message(DeadLettersChosen("purge", tuple(self._entries.values()), scope=self._scope()))

    def _scope(self) -> str:
        n = len(self._entries)
        scope = ("the one entry listed" if n == 1 else f"all {n} entries listed") + (
            f" under the filter {self._filter_text}" if self._filter_text else ""
        )
        if self._truncated:
            scope += " (only the newest are listed: act again for older ones)"
        return scope
