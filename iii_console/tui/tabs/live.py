"""Live: counters with rates and sparklines, the event log, and a problems panel."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from functools import partial
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import RichLog

from iii_console.core.examples import MESSAGES_PATH, post_routes, topic_targets
from iii_console.core.text import first_line
from iii_console.tui import fmt
from iii_console.tui.filter import EventFilter
from iii_console.tui.lines import LineLog
from iii_console.tui.model import TILES, LogEntry
from iii_console.tui.widgets import CounterTile, Pane, View, retitle

#: Lines written to the log per render tick; past this a marker says how many were skipped, and
#: only as many as the log shows at once are written (each costs a Rich render, and lines
#: scrolled past unseen in the same tick are wasted: at 5,000 events/s that was half the log's cost).
MAX_LINES_PER_TICK = 80
#: Lines the log keeps for scrolling back (each is a Strip of Segments and caches the garbage
#: collector walks), and how many are redrawn when the filter changes: a few screens, as
#: each is rendered before the key that changed the filter shows its result (300 took
#: ~100 ms at 5,000 events/s).
LOG_LINES = 1000
REFILTER_LINES = 100
#: Below this many columns the Problems panel goes under the event log instead of beside it.
NARROW_BELOW = 140


class LivePane(Pane):
    DEFAULT_CSS = """
    LivePane #tiles { height: 5; }
    LivePane CounterTile { width: 1fr; }
    LivePane #live-body { height: 1fr; }
    LivePane #events { width: 1fr; border: round $panel-lighten-2; border-title-color: $text; }
    LivePane #problems { width: 56; border: round $error 60%; border-title-color: $error; }
    LivePane.narrow #live-body { layout: vertical; }
    LivePane.narrow #problems { width: 1fr; height: 10; }
    LivePane #events:focus, LivePane #problems:focus { border: round $accent; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._seq = 0
        self._filter = EventFilter()
        self._problems_key: tuple[Any, ...] = ()
        self._hint_shown: str | None = None
        #: Whether the Problems panel has more than "No problems" to say (a narrow terminal shows it only then).
        self._problems_to_show = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="tiles"):
            for tile in TILES:
                yield CounterTile(tile.name, tile.type, id=f"tile-{tile.name}")
        with Horizontal(id="live-body"):
            log = LineLog(id="events", max_lines=LOG_LINES, auto_scroll=True)
            retitle(log, title="Events")
            yield log
            # min_width: wrapped at the panel's own width (RichLog's default, 78 columns, is wider than the
            # panel: lines were wrapped there, then cut at the panel's edge).
            problems = RichLog(
                id="problems", max_lines=400, wrap=True, markup=False, highlight=False, auto_scroll=False, min_width=20
            )
            retitle(problems, title="Problems")
            yield problems

    def on_resize(self) -> None:
        # A narrow terminal gives the whole width to the event log, and the problems go under it,
        # shown only while there is one (or the first-message hint) to show.
        self.set_class(self.size.width < NARROW_BELOW, "narrow")
        self._problems_key = ()  # written again at the next tick: RichLog wraps lines as they are written
        self._fit_problems()

    def _fit_problems(self) -> None:
        self.query_one("#problems").display = not self.has_class("narrow") or self._problems_to_show

    def show(self, view: View) -> None:
        m = view.model
        for tile in TILES:
            note = f"{m.in_flight} now" if tile.name == "processing" else ""
            self.query_one(f"#tile-{tile.name}", CounterTile).show(m.tiles[tile.name], view.now_ms, note)
        self._show_log(view)
        self._show_problems(view)

    def _show_log(self, view: View) -> None:
        log = self.query_one("#events", LineLog)
        m, flt = view.model, view.filter
        if m.seq == 0:
            # Written again when the registry (what the project serves) arrives or changes.
            hint = self._hint(view)
            if hint.plain != self._hint_shown:
                log.clear()
                self._hint_shown = hint.plain
                log.write_lines(list(hint.split("\n")))
            return
        if self._hint_shown is not None:
            self._hint_shown = None
            log.clear()
        follow = log.is_vertical_scroll_end or log.max_scroll_y == 0
        if flt != self._filter:
            self._filter = flt
            log.clear()
            entries = m.log_tail(flt, REFILTER_LINES)
            skipped = earlier = 0
        else:
            new = m.log_since(self._seq)
            entries = [e for e in new if flt.matches(e.event)] if flt else new
            limit = MAX_LINES_PER_TICK
            height = log.scrollable_content_region.height
            if len(entries) > limit and height > 1:
                limit = min(limit, height - 1)  # the marker takes a line
            cut = entries[:-limit] if len(entries) > limit else []
            # History read back at start is not "too fast": only live events passed over count.
            earlier = sum(1 for e in cut if e.seq <= m.history_seq)
            skipped = len(cut) - earlier
            if self._seq and new and new[0].seq > self._seq + 1:
                gap = range(self._seq + 1, new[0].seq)  # fell out of the buffer while not shown
                in_history = max(0, min(gap.stop, m.history_seq + 1) - gap.start)
                earlier += in_history
                skipped += len(gap) - in_history
            entries = entries[-limit:]
        self._seq = m.seq
        out: list[Text | Callable[[], Text]] = []
        if earlier:
            out.append(
                Text(
                    f"… {fmt.num(earlier)} earlier events read from the stream's history "
                    "(Messages tab for each message, / to filter)",
                    style="bright_black italic",
                )
            )
        if skipped:
            out.append(
                Text(
                    f"… {fmt.num(skipped)} events not shown (too fast to read; "
                    "/ to filter, p to pause, Messages tab for each message)",
                    style="bright_black italic",
                )
            )
        out.extend(partial(fmt.event_line, e.event) for e in entries)
        if out:
            log.write_lines(out, scroll_end=follow)
        title = "Events"
        if flt:
            title += f" · filter: {flt.text}"
        if not follow:
            title += " · scrolled (end to follow)"
        retitle(log, title=title)
        retitle(log, subtitle=f"{fmt.num(m.seq)} read · {fmt.rate(m.all_events.rate(view.now_ms))}")

    def _show_problems(self, view: View) -> None:
        m = view.model
        last = m.problems[-1].seq if m.problems else 0
        # Until a first message shows up (the stream's own events, a worker starting, do not
        # count), the panel also says how to send one: the log has moved past its own hint.
        quiet = m.tiles["received"].total == 0 and m.tiles["enqueued"].total == 0
        hint = self._hint(view, title="No messages yet") if quiet else None
        key = (last, len(m.step_errors), hint.plain if hint is not None else None)
        if key == self._problems_key:
            return
        self._problems_key = key
        box = self.query_one("#problems", RichLog)
        box.clear()
        out: list[Text] = []
        for ev in m.step_errors.values():
            d = ev.data if isinstance(ev.data, dict) else {}
            where = f"{d.get('file', '?')}:{d.get('line', '?')}" if d.get("line") else str(d.get("file") or ev.step or "")
            out.append(
                Text.assemble(
                    ("step error ", "bold red"), (where, "bold"), "\n  ", (fmt.plain(first_line(ev.error or "")), "red")
                )
            )
        out.extend(_problem_line(entry) for entry in list(reversed(m.problems))[:60])
        self._problems_to_show = bool(out) or hint is not None
        self._fit_problems()
        if not out:
            out.append(Text("No problems: no step errors, failures or dead letters.", style="green"))
            if hint is not None:
                out.append(Text("\n").join([Text(""), hint]))
        box.write(Text("\n").join(out), scroll_end=False)
        retitle(box, title=f"Problems ({len(m.step_errors)} step errors)" if m.step_errors else "Problems")

    def _hint(self, view: View, title: str = "No events yet") -> Text:
        return first_message_hint(
            getattr(self.app, "server_url", None),
            view.snap.steps,
            read_only=getattr(self.app, "read_only", False),
            title=title,
        )


def _problem_line(entry: LogEntry) -> Text:
    ev = entry.event
    style = (
        "bold red"
        if ev.type in ("message.dead_lettered", "step.error")
        else "dark_orange"
        if ev.type == "message.redelivered"
        else "red"
    )
    label = {
        "message.failed": "failed",
        "message.dead_lettered": "dead",
        "step.error": "step.error",
        "log": "error log",
        "message.redelivered": "redelivered",
        "redis.down": "redis down",
    }.get(ev.type, ev.type)
    if ev.type == "message.failed" and fmt.timed_out(ev):
        label = "timed out"
    if ev.type == "redis.down":
        msg_data = ev.data if isinstance(ev.data, dict) else {}
        return Text.assemble(
            (fmt.hms(ev.ts), "bright_black"),
            " ",
            (f"{label:<10}", "bold red"),
            "\n  ",
            (f"{ev.error}; restart {msg_data.get('attempt', 0) + 1} in {msg_data.get('restart_in_ms', '?')} ms", "bold red"),
        )
    if ev.type == "message.redelivered":
        d = ev.data if isinstance(ev.data, dict) else {}
        msg = f"{d.get('reason', '')}: {ev.worker or d.get('worker_id', '?')} held it (delivery {d.get('deliveries', '?')})"
    else:
        msg = ev.error or (ev.data.get("message") if isinstance(ev.data, dict) else "") or ""
    return Text.assemble(
        (fmt.hms(ev.ts), "bright_black"),
        " ",
        (f"{label:<10}", style),
        " ",
        ((ev.step or "-"), "bold"),
        " ",
        (ev.trace_id[:8], "bright_black"),
        "\n  ",
        (fmt.plain(first_line(msg)), style),
    )


def first_message_hint(
    server_url: str | None, steps: dict[str, Any] | None = None, *, read_only: bool = False, title: str = "No events yet"
) -> Text:
    """What an empty log says: nothing has happened yet, and how to send the first message.

    ``steps`` is the step registry: the hint names a route the project serves (``/messages``
    where it exists, else its first JSON ``POST`` route, with a body fitting its schema), or,
    with no HTTP step, a topic a step subscribes to. No registry yet: the seed's ``/messages``.
    """
    url = (server_url or "http://127.0.0.1:3111").rstrip("/")
    out = Text(f"{title}. Send a first message:\n", style="bold")
    routes = post_routes(steps or {})
    topics = topic_targets(steps or {})
    if steps and not routes:
        if topics:
            t = topics[0]
            out.append(f"  iii-console send --topic {t.topic} --data {shlex.quote(t.example_json)}", "cyan")
            out.append("   (from the project's folder; no step takes a JSON POST)", "bright_black")
        else:
            out.append("  no step takes a JSON POST or subscribes to a topic: add one in steps/", "bright_black")
        return out
    route = routes[0].path if routes else MESSAGES_PATH
    body = routes[0].example_json if routes and route != MESSAGES_PATH else '{"text": "hello"}'
    if not read_only and server_url:
        out.append("  s", "bold cyan")
        out.append("  here, to open the send form\n")
    out.append(f"  curl -X POST {url}{route} -H 'content-type: application/json' -d {shlex.quote(body)}\n", "cyan")
    if route == MESSAGES_PATH:
        out.append("  iii-console send hello", "cyan")
    else:
        out.append(f"  iii-console send --path {route} --data {shlex.quote(body)}", "cyan")
    out.append("   (from the project's folder)", "bright_black")
    return out
