"""Cron (schedules and drift), Workers (instances and heartbeats), Steps (triggers and flows).

One module because the three views are each small and are built the same way, from the
same table and formatting helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from iii_console.core.cronexpr import next_fire
from iii_console.core.text import first_line
from iii_console.format import TYPE_STYLE, clock
from iii_console.tui import fmt
from iii_console.tui.messages import CronRunChosen
from iii_console.tui.widgets import EventList, Pane, Table, View, cursor_key, lines, n, retitle, t

#: A worker whose last heartbeat is older than this looks stale (the runtime's default timeout is 30 s).
STALE_AFTER_MS = 15_000

CRON_COLUMNS = (
    ("Step", 22),
    ("Expression", 16),
    ("Next fire (UTC)", 16),
    ("In", 9),
    ("Last scheduled", 14),
    ("Last fired", 10),
    ("Drift", 9),
    ("Fired", 6),
    ("Skipped", 7),
    ("Note", None),
)


class CronPane(Pane):
    wants = frozenset({"cron"})
    writes = frozenset({"run_now"})
    BINDINGS = [
        Binding("r", "run_now", "Run now"),
        Binding("r", "app.read_only", show=False),  # what r does on a read-only console
    ]

    DEFAULT_CSS = """
    CronPane #cron-table { height: auto; max-height: 60%; }
    CronPane #cron-runs { height: 1fr; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._runs: Any = None

    def compose(self) -> ComposeResult:
        yield Table(CRON_COLUMNS, title="Cron", id="cron-table")
        yield EventList(id="cron-runs", title="Recent runs")

    def show(self, view: View) -> None:
        self.query_one(EventList).show_events(view.model.cron_events, empty="No cron step has fired since the console started.")
        table = self.query_one(Table)
        if "cron" not in view.snap.loaded:
            retitle(table, subtitle="loading…")
            return
        now = datetime.fromtimestamp(view.now_ms / 1000, UTC)
        rows = []
        for c in view.snap.cron:
            try:
                nxt = next_fire(c.expression, now)
                nxt_ms = int(nxt.timestamp() * 1000) if nxt else None
                note = ""
            except ValueError as exc:
                nxt_ms, note = None, str(exc)
            seen = view.model.cron.get(c.step)
            drift = (c.last_fired_ms - c.last_scheduled_ms) if c.last_fired_ms and c.last_scheduled_ms else None
            if seen and seen.last_skip_reason:
                note = note or f"last skip: {seen.last_skip_reason}"
            rows.append(
                (
                    f"{c.step}|{c.expression}",
                    (
                        t(c.step, "bold"),
                        t(c.expression, "magenta"),
                        t(datetime.fromtimestamp(nxt_ms / 1000, UTC).strftime("%m-%d %H:%M:%S") if nxt_ms else "-"),
                        t(fmt.until(nxt_ms, view.now_ms), "cyan", justify="right"),
                        t(
                            datetime.fromtimestamp(c.last_scheduled_ms / 1000, UTC).strftime("%H:%M:%S")
                            if c.last_scheduled_ms
                            else "never",
                            "" if c.last_scheduled_ms else "bright_black",
                        ),
                        t(fmt.ago(c.last_fired_ms, view.now_ms) + " ago" if c.last_fired_ms else "-", justify="right"),
                        t(f"{drift} ms" if drift is not None else "-", _drift_style(drift), justify="right"),
                        n(seen.fired if seen else 0),
                        n(seen.skipped if seen else 0, "dark_orange"),
                        t(note, "dark_orange"),
                    ),
                )
            )
        table.show_rows(rows)
        retitle(table, title=f"Cron ({len(rows)} schedules)")
        retitle(table, subtitle="times in UTC, as the scheduler runs them" if rows else "no cron steps")

    def action_run_now(self) -> None:
        key = cursor_key(self.query_one(Table))
        if not key or "|" not in key:
            self.notify("No cron step is highlighted.", severity="warning")
            return
        step, expression = key.split("|", 1)
        self.post_message(CronRunChosen(step, expression))


def _drift_style(drift: int | None) -> str:
    if drift is None:
        return "bright_black"
    return "green" if drift < 250 else "yellow" if drift < 2000 else "red"


WORKER_COLUMNS = (
    ("Worker", 24),
    ("Host", 16),
    ("PID", 8),
    ("In flight", 9),
    ("Up", 8),
    ("Heartbeat", 10),
    ("Status", 6),
    ("Id", 10),
    ("Queues × concurrency", None),
)


class WorkersPane(Pane):
    wants = frozenset({"workers"})

    DEFAULT_CSS = """
    WorkersPane #workers-table { height: auto; max-height: 60%; }
    WorkersPane #worker-events { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Table(WORKER_COLUMNS, title="Workers", id="workers-table")
        yield EventList(id="worker-events", title="Worker starts and stops", line=worker_line)

    def show(self, view: View) -> None:
        self.query_one(EventList).show_events(
            view.model.worker_events, empty="No worker started or stopped since the console started."
        )
        table = self.query_one(Table)
        if "workers" not in view.snap.loaded:
            retitle(table, subtitle="loading…")
            return
        rows = []
        stale = 0
        for w in view.snap.workers:
            age = view.now_ms - w.heartbeat_ms if w.heartbeat_ms else None
            ok = age is not None and age < STALE_AFTER_MS
            stale += not ok
            rows.append(
                (
                    w.id,
                    (
                        t(w.name or w.id, "bold"),
                        t(w.host),
                        t(w.pid, justify="right"),
                        n(w.in_flight, "yellow"),
                        t(fmt.ago(w.started_ms, view.now_ms), justify="right"),
                        t(
                            fmt.ago(w.heartbeat_ms, view.now_ms) + " ago" if w.heartbeat_ms else "never",
                            "" if ok else "red",
                            justify="right",
                        ),
                        t("alive" if ok else "stale", "green" if ok else "bold red"),
                        t(w.id[:8], "bright_black"),
                        t("  ".join(f"{q}×{c}" for q, c in sorted(w.queues.items(), key=lambda x: (x[0].startswith("_"), x[0])))),
                    ),
                )
            )
        table.show_rows(rows)
        total_flight = sum(w.in_flight for w in view.snap.workers)
        retitle(table, title=f"Workers ({len(rows)})")
        retitle(
            table,
            subtitle=(f"{total_flight} in flight" + (f" · {stale} stale" if stale else "")) if rows else self._no_workers(),
        )

    def _no_workers(self) -> str:
        starting = getattr(self.app, "local_workers", 0)
        if starting:
            # Each imports the steps before it registers: seconds, for a step whose module code is slow.
            return f"no workers registered yet: this console's {starting} worker process(es) are starting (importing the steps)"
        return "no workers registered: start `iii-console` or `iii-console --no-ui --role worker`"


def worker_line(ev: Any) -> Text:
    d = ev.data if isinstance(ev.data, dict) else {}
    style = "bright_blue" if ev.type == "worker.started" else "dark_orange"
    if ev.type == "worker.started":
        raw_queues = d.get("queues")
        queues = raw_queues if isinstance(raw_queues, dict) else {}
        what = Text.assemble(
            (str(d.get("name") or d.get("id", "")), "bold"),
            f"  host {d.get('host', '?')} pid {d.get('pid', '?')}  ",
            ("  ".join(f"{q}×{c}" for q, c in queues.items()), "bright_black"),
        )
    elif d.get("reason") == "recycled":
        style = "yellow"
        what = Text.assemble(
            (str(d.get("id", ""))[:8], "bold"),
            "  ",
            (f"recycled ({d.get('cause', '?')})", "bold yellow"),
            f"  {d.get('detail', '')}",
        )
    else:
        how = d.get("signal") or (f"exit code {d['exit_code']}" if "exit_code" in d else "")
        extra = (f" ({how})" if how else "") + (f"  gave back {d['requeued']} message(s)" if "requeued" in d else "")
        if d.get("abandoned"):
            extra += f"  abandoned {d['abandoned']} running handler message(s)"
        style = "bold red" if d.get("reason") in ("crashed", "heartbeat lost") else style
        what = Text.assemble((str(d.get("name") or str(d.get("id", ""))[:8]), "bold"), f"  {d.get('reason', '')}{extra}")
    return Text.assemble((clock(ev.ts), "bright_black"), "  ", (f"{ev.type:<16}", style), what)


STEP_COLUMNS = (("Step", 20), ("Triggers", 32), ("Enqueues", 16), ("Flows", 10), ("File", 26), ("Description", None))


class StepsPane(Pane):
    wants = frozenset({"registry"})

    DEFAULT_CSS = """
    StepsPane #steps-table { height: auto; max-height: 50%; }
    StepsPane #flows-box { height: 1fr; border: round $panel-lighten-2; }
    StepsPane #flows { padding: 0 1; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._key: Any = None

    def compose(self) -> ComposeResult:
        yield Table(STEP_COLUMNS, title="Steps", id="steps-table")
        with VerticalScroll(id="flows-box") as box:
            retitle(box, title="Flows")
            yield Static("", id="flows")

    def show(self, view: View) -> None:
        steps = view.snap.steps
        table = self.query_one(Table)
        errors = list(view.model.step_errors.values())
        writers = {g: set(w) for g, w in view.model.state_writers.items()}
        key = (
            tuple(sorted((k, repr(v)) for k, v in steps.items())),
            len(errors),
            "registry" in view.snap.loaded,
            tuple(sorted((g, tuple(sorted(w))) for g, w in writers.items())),
        )
        if key == self._key:
            return
        self._key = key
        if "registry" not in view.snap.loaded:
            retitle(table, subtitle="loading…")
            return
        table.show_rows(
            [
                (
                    name,
                    (
                        t(name, "bold"),
                        t(", ".join(s.get("triggers", [])), "cyan"),
                        t(", ".join(s.get("enqueues", [])) or "-", "blue"),
                        t(", ".join(s.get("flows", [])) or "-"),
                        t(_tail(s.get("file") or ""), "bright_black"),
                        t(s.get("description") or ""),
                    ),
                )
                for name, s in sorted(steps.items())
            ]
        )
        retitle(table, title=f"Steps ({len(steps)})")
        retitle(table, subtitle=f"{len(errors)} failed to load" if errors else "")
        self.query_one("#flows", Static).update(flow_text(steps, errors, writers))


def _tail(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def _trigger_label(spec: dict[str, Any]) -> tuple[str, str]:
    kind = spec.get("type")
    if kind == "http":
        return f"{spec.get('method')} {spec.get('path')}", TYPE_STYLE["http.received"]
    if kind == "queue":
        return f"queue {spec.get('topic')}", TYPE_STYLE["message.enqueued"]
    if kind == "cron":
        return f"cron {spec.get('expression')}", TYPE_STYLE["cron.fired"]
    if kind == "state":
        group, cond = spec.get("group"), (" if …" if spec.get("conditional") else "")
        if isinstance(group, str) and group.startswith("_stream."):  # a Motia stream (core/motia)
            return f"stream {group[len('_stream.') :]} {spec.get('key', '*')}{cond}", "bright_black"
        return f"state {group if group is not None else '*'}/{spec.get('key', '*')}{cond}", "bright_black"
    return str(kind), ""


def flow_text(steps: dict[str, dict[str, Any]], errors: Sequence[Any] = (), writers: dict[str, set[str]] | None = None) -> Text:
    """Each entry point (HTTP, cron, ...) followed through what its steps enqueue.

    State triggers are followed from the steps *seen* writing their group
    (``state.changed`` events name the writer), since writes are not declared.
    """
    writers = writers or {}
    specs = {name: s.get("trigger_specs", []) for name, s in steps.items()}
    by_topic: dict[str, list[str]] = {}
    by_group: dict[str | None, list[tuple[str, dict[str, Any]]]] = {}
    for name, sp_list in specs.items():
        for sp in sp_list:
            if sp.get("type") == "queue":
                by_topic.setdefault(sp["topic"], []).append(name)
            elif sp.get("type") == "state":
                by_group.setdefault(sp.get("group", ""), []).append((name, sp))
    produced = {topic for s in steps.values() for topic in s.get("enqueues", [])}
    # Motia's virtualEnqueues / virtualSubscribes: links drawn, not run (dotted arrows)
    virtual_subs: dict[str, list[str]] = {}
    for name, s in steps.items():
        for topic in s.get("virtual_subscribes", []):
            virtual_subs.setdefault(topic, []).append(name)
    virtually_produced = {topic for s in steps.values() for topic in s.get("virtual_enqueues", [])}
    out: list[Text] = []

    def walk(step: str, depth: int, seen: frozenset[str]) -> None:
        pad = "    " * depth + "└─▶ "
        for topic in steps.get(step, {}).get("enqueues", []):
            subs = sorted(by_topic.get(topic, []))
            out.append(
                Text.assemble(
                    pad,
                    (f"queue {topic}", "blue"),
                    " ─▶ ",
                    (", ".join(subs) if subs else "no subscriber!", "bold" if subs else "bold red"),
                )
            )
            for sub in subs:
                if sub not in seen:
                    walk(sub, depth + 1, seen | {sub})
            watchers = sorted(virtual_subs.get(topic, []))
            if watchers:
                out.append(
                    Text.assemble("    " * depth + "└┈▷ ", (f"queue {topic}", "blue"), " ┈▷ ", (", ".join(watchers), "bold"))
                )
                for sub in watchers:
                    if sub not in seen:
                        walk(sub, depth + 1, seen | {sub})
        for topic in steps.get(step, {}).get("virtual_enqueues", []):
            subs = sorted(set(by_topic.get(topic, []) + virtual_subs.get(topic, [])))
            out.append(
                Text.assemble(
                    "    " * depth + "└┈▷ ",
                    (f"virtual {topic}", "blue"),
                    " ┈▷ ",
                    (", ".join(subs) if subs else "(outside)", "bold" if subs else "bright_black"),
                )
            )
            for sub in subs:
                if sub not in seen:
                    walk(sub, depth + 1, seen | {sub})
        for group, ws in sorted(writers.items()):
            if step not in ws:
                continue
            reached = by_group.get(group, []) + ([] if group.startswith("_stream.") else by_group.get(None, []))
            for sub, sp in sorted(reached, key=lambda x: x[0]):
                label, style = _trigger_label(sp)
                out.append(Text.assemble(pad, (label, style), " ─▶ ", (sub, "bold"), ("  (writes seen)", "bright_black")))
                if sub not in seen:
                    walk(sub, depth + 1, seen | {sub})

    flows: dict[str, list[str]] = {}
    for name, s in sorted(steps.items()):
        for f in s.get("flows") or ["(no flow)"]:
            flows.setdefault(f, []).append(name)
    order = {"http": 0, "cron": 1, "state": 2, "queue": 3}
    for flow, names in sorted(flows.items()):
        out.append(Text(flow, style="bold underline"))
        entries = []
        for name in names:
            for sp in specs[name]:
                kind = sp.get("type")
                if kind == "queue" and sp.get("topic") in produced:
                    continue  # reached through the step that enqueues it
                group = sp.get("group", "")
                if kind == "state" and (
                    writers.get(group) if group is not None else any(not g.startswith("_stream.") for g in writers)
                ):
                    continue  # reached through the steps seen writing the group (any group, for a trigger without one)
                entries.append((order.get(kind, 9), name, sp))
        for _, name, sp in sorted(entries, key=lambda e: (e[0], e[1])):
            label, style = _trigger_label(sp)
            out.append(Text.assemble("  ", (label, style), " ─▶ ", (name, "bold")))
            walk(name, 1, frozenset({name}))
        for name in names:
            for topic in steps[name].get("virtual_subscribes", []):
                if topic not in virtually_produced and topic not in produced:
                    out.append(Text.assemble("  ", (f"virtual {topic}", "blue"), " ┈▷ ", (name, "bold")))
                    walk(name, 1, frozenset({name}))
        out.append(Text(""))
    for ev in errors:
        d = ev.data if isinstance(ev.data, dict) else {}
        where = f"{d.get('file', '?')}:{d.get('line')}" if d.get("line") else str(d.get("file") or "")
        out.append(
            Text.assemble(
                ("✗ ", "bold red"), (ev.step or "?", "bold"), f"  {where}  ", (fmt.plain(first_line(ev.error or "")), "red")
            )
        )
    if not steps and not errors:
        out.append(Text("No steps registered yet: the running project publishes them at start.", style="bright_black"))
    return lines(out)
