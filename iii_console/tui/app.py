"""The live console: a Textual app that tails the event stream and reads Redis.

Structure (attributes down, messages up):

- one thread worker reads the event stream (:func:`~iii_console.tui.source.follow_stream`),
  decodes it and applies it to the plain :class:`~iii_console.tui.model.ConsoleModel`
  (every buffer in it is bounded; a backlog waits in Redis, so nothing is dropped and
  memory stays flat), and survives Redis going away by resuming from the last id it saw;
- one thread worker polls snapshots (:func:`~iii_console.tui.source.poll_snapshots`:
  registries, workers, queue depths, dead letters, state, cron) for what the visible
  tab needs and posts them up;
- a timer a few times a second hands a :class:`View` of the model down to the
  visible tab, which draws what changed in one batch; the model lock keeps the
  reader out while it does.

Writes (replay, purge, state edits, a cron run) are confirmed in a modal, then done
in a worker thread through the core, as the CLI does them (``writes.py``); a
read-only console has no writer at all and hides those actions.

The app never imports the runtime or the adapters: it can attach to any Redis.

What reads Redis is in ``source.py``, the screens in ``screens/``, the tabs in ``tabs/``,
the messages in ``messages.py`` and the send form's post in ``core/send.py`` (shared with
``iii-console send``). What stays here is long because it is one object in Textual's
model: the bindings, the actions they name, and the handlers of every message the tabs
and screens post up are methods of the :class:`ConsoleApp` itself.
"""

from __future__ import annotations

import functools
import gc
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Input, Static, TabbedContent, TabPane
from textual.widgets._tabbed_content import ContentTabs
from textual.worker import Worker, WorkerState

from iii_console.core.config import redact_url
from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.core.text import printable
from iii_console.tui import fmt
from iii_console.tui.filter import EventFilter
from iii_console.tui.messages import (
    OpenTrace,
    SnapshotReady,
    StateGroupChosen,
    TraceFound,
)
from iii_console.tui.model import ConsoleModel
from iii_console.tui.ops import Writer
from iii_console.tui.screens import (
    HelpScreen,
    SendRequest,
    SendScreen,
    TraceScreen,
)
from iii_console.tui.source import Link, Snapshot, StreamTail, connect, find_trace, follow_stream, poll_snapshots
from iii_console.tui.tabs.live import LivePane
from iii_console.tui.tabs.messages import MessagesPane
from iii_console.tui.tabs.queues import DeadLettersPane, QueuesPane
from iii_console.tui.tabs.state import StatePane
from iii_console.tui.tabs.system import CronPane, StepsPane, WorkersPane
from iii_console.tui.widgets import KeysFooter, Pane, View, update
from iii_console.tui.writes import WriteFlows

#: (pane id, tab label, pane class); the number keys follow this order.
TABS = (
    ("live", "Live", LivePane),
    ("messages", "Messages", MessagesPane),
    ("queues", "Queues", QueuesPane),
    ("dlq", "Dead letters", DeadLettersPane),
    ("state", "State", StatePane),
    ("cron", "Cron", CronPane),
    ("workers", "Workers", WorkersPane),
    ("steps", "Steps", StepsPane),
)

PANE_CLASSES: dict[str, type[Pane]] = {pid: cls for pid, _, cls in TABS}

#: Events the reader thread moves into the model per hold of the model lock, so a render
#: (and so a key press) never waits for more than one chunk (a few ms); between chunks it
#: offers the GIL to the UI thread. It also reads the stream this many at a time: a read of
#: 2,000 (a reply of ~40,000 small strings, then as many events) put a burst of a few MB on
#: top of what the model holds whenever the reader fell behind (a peak the allocator keeps
#: arenas for).
INGEST_CHUNK = 200
FILTER_DEBOUNCE_S = 0.2
#: Above this many events/s the tab is redrawn at most every :data:`BUSY_DRAW_S`, not every
#: tick: each redraw's frame costs the UI thread 40-100 ms there (a screenful of new log
#: lines, tiles and sparklines, or a table), and a key press waits behind the one being painted.
BUSY_RATE = 1000.0
BUSY_DRAW_S = 0.5
#: How many ways the status bar can be shortened (:meth:`ConsoleApp._topbar_text`).
TOPBAR_LEVELS = 5
ANNOUNCED = frozenset({"step.error", "message.dead_lettered"})
#: A state group is read this many keys at a time (the State tab lists at most that),
#: plus the keys the console saw change most recently, fetched by name.
STATE_KEYS = 1000
STATE_RECENT_KEYS = 200


class ConsoleApp(WriteFlows):
    CSS_PATH = Path(__file__).parent / "console.tcss"  # absolute, so subclasses elsewhere find it
    AUTO_FOCUS = "#events"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        # A priority binding runs as the key is read, before the keys after it are routed: a
        # burst (``/status`` pasted or typed fast) then goes to the box `/` opened.
        Binding("slash", "filter", "Filter", key_display="/", priority=True),
        Binding("p", "pause", "Pause"),
        Binding("s", "send", "Send"),
        Binding("s", "read_only", show=False),  # what s does on a read-only console
        Binding("escape", "back", "Back", show=False),
        *[Binding(str(i), f"show_tab('{pid}')", label, show=False) for i, (pid, label, _) in enumerate(TABS, 1)],
    ]

    def __init__(
        self,
        *,
        redis_url: str,
        keys: Keys,
        server_url: str | None = None,
        read_only: bool = False,
        clock: Callable[[], float] = time.time,
        title: str = "iii-console",
        history: int = 2000,
        tick_s: float = 0.25,
        poll_s: float = 1.0,
        events_maxlen: int = 100_000,
        broker: Any = None,
    ):
        super().__init__()
        self.title = title
        self.redis_url = redis_url
        #: Where the console reads from, as shown in the status bar (no password).
        self.where = f"{redact_url(redis_url)} {keys.prefix}"
        #: Shown once the console is up (the Redis version's security warning, say).
        self.notice: str | None = None
        #: Stops the runtime this console runs in (``iii-console`` sets it); ``q`` awaits it with
        #: the console still up and saying so, rather than a blank terminal while work drains.
        self.stop_runtime: Callable[[], Awaitable[None]] | None = None
        #: Worker processes the runtime this console runs in started (0: it runs none, or it only attaches).
        self.local_workers = 0
        self._quitting = False
        #: What ``stop_runtime`` raised, for the caller to report once the terminal is back.
        self.stop_error: BaseException | None = None
        self.keys = keys
        self.server_url = server_url.rstrip("/") if server_url else None
        self.read_only = read_only
        #: Replay, purge and state edits; a read-only console has none, so it cannot write by mistake.
        self.writer = None if read_only else Writer(redis_url, keys, events_maxlen=events_maxlen, broker=broker)
        self.clock = clock
        self.tick_s = tick_s
        self.poll_s = poll_s
        self.model = ConsoleModel()
        self.snap = Snapshot()
        self.filter = EventFilter()
        self.paused = False
        self.link = Link()
        self.tail = StreamTail(keys.events, history=history, batch=INGEST_CHUNK)
        #: The reader thread writes the model and the UI thread draws from it: one holds this at a time.
        self.model_lock = threading.RLock()
        #: Step errors and dead letters read live (not history), for the next tick to announce.
        self._announce_q: deque[Event] = deque(maxlen=200)
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._active = "live"
        self._state_group: str | None = None
        self._paused_at_seq = 0
        self._filter_before = ""
        self._filter_timer: Timer | None = None
        #: A tab asked for (a number key) before the tab bar was mounted.
        self._pending_tab: str | None = None
        self._seen_link: tuple[bool | None, int] = (None, 0)
        self._drawn_at = 0.0
        self._revs = (0, 0, 0)
        self.render_count = 0
        #: Most events read at once and not yet in the model (at most ``tail.batch``); a backlog
        #: waits in the Redis stream, not in this process, so memory stays flat when the reader lags.
        self.inbox_peak = 0
        #: Names of the reader loops still running; empty once they have stopped after quit.
        self.readers: set[str] = set()

    # -- layout -------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("", id="topbar")
        with TabbedContent(id="tabs", initial="live"):
            for i, (pid, label, cls) in enumerate(TABS, 1):
                with TabPane(f"{i} {label}", id=pid):
                    if pid == "live":
                        yield cls(id=f"pane-{pid}")  # the others are mounted when first shown
        yield Input(
            placeholder="filter: type:message.failed topic:… step:… trace:… status:… or words  (enter keeps, esc cancels)",
            id="filter",
        )
        yield KeysFooter()

    def on_mount(self) -> None:
        # The main screen's widgets, kept so they can be updated while another screen is on top.
        self._topbar = self.query_one("#topbar", Static)
        self._filter_box = self.query_one("#filter", Input)
        self._tabs = self.query_one("#tabs", TabbedContent)
        self._panes: dict[str, Pane] = {"live": self.query_one("#pane-live", LivePane)}
        self._read_stream()
        self._poll()
        if self.notice:
            self.notify(printable(self.notice), title="Warning", severity="warning", timeout=15, markup=False)
        self.set_interval(self.tick_s, self._tick, name="render")
        self.set_interval(TRIM_S, _trim_heap, name="trim")
        self._redraw(self.now_ms())

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- workers ------------------------------------------------------------
    @work(thread=True, exclusive=True, group="stream", name="event-stream", exit_on_error=False)
    def _read_stream(self) -> None:
        """The one reader of the event stream: Redis -> model, in order, resuming after outages."""
        self.readers.add("stream")
        try:
            follow_stream(self.redis_url, self.tail, self.link, self._stop, self._deliver)
        finally:
            self.readers.discard("stream")

    def _deliver(self, events: list[Event], history: bool) -> None:
        self.inbox_peak = max(self.inbox_peak, len(events))
        self._ingest(events, announce=not history)

    def _ingest(self, events: list[Event], *, announce: bool) -> None:
        """On the reader thread: decoded events into the model, so the UI thread only draws.

        Ingesting on the render tick made every tick (and the key presses queued behind
        it) wait up to 50 ms at 5,000 events/s; here the UI waits at most for one chunk.
        """
        for i in range(0, len(events), INGEST_CHUNK):
            chunk = events[i : i + INGEST_CHUNK]
            now = self.now_ms()
            with self.model_lock:
                self.model.ingest(chunk, now, history=not announce)
            if announce:
                self._announce_q.extend(e for e in chunk if e.type in ANNOUNCED)
            time.sleep(0)  # a waiting UI thread takes the GIL now, not at the end of the switch interval

    @work(thread=True, exclusive=True, group="poll", name="snapshots", exit_on_error=False)
    def _poll(self) -> None:
        """Registries, workers, queue depths, dead letters, state and cron, for the visible tab."""
        self.readers.add("poll")
        try:
            poll_snapshots(
                self.redis_url,
                self.keys,
                self._stop,
                self._poke,
                snap=self.snap,
                wants=lambda: {"workers", "dlq_counts"} | set(PANE_CLASSES[self._active].wants),
                state_group=lambda: self._state_group,
                recent_keys=self._recent_state_keys,
                interval=lambda: self.poll_s,
                publish=lambda snap: self.post_message(SnapshotReady(snap)),
                state_limit=STATE_KEYS,
            )
        finally:
            self.readers.discard("poll")

    def _recent_state_keys(self, group: str) -> list[str]:
        with self.model_lock:
            return list(self.model.state_recent(group))[-STATE_RECENT_KEYS:]

    @work(thread=True, group="trace", name="trace-search", exit_on_error=False)
    def _search_trace(self, trace_id: str) -> None:
        client = connect(self.redis_url)
        try:
            events = find_trace(client, self.keys.events, trace_id)
        except redis.RedisError:
            events = []
        finally:
            client.close()
        self.post_message(TraceFound(trace_id, events))

    @work(thread=True, group="send", exit_on_error=False)
    def _send(self, req: SendRequest) -> None:
        """Post the form's message ``req.count`` times (``core/send.py``, as ``iii-console send``)."""
        from iii_console.core.send import SendFailed, post_messages

        assert self.server_url is not None
        try:
            last = post_messages(self.server_url, req.body, req.count, path=req.path)
        except SendFailed as exc:
            problem = f"no server at {self.server_url}: is `iii-console` running?" if exc.unreachable else str(exc)
            if exc.status is not None and 400 <= exc.status < 500 and not exc.sent:
                # Refused as it stands (a field missing or of the wrong type): back to the form to fix it.
                self.call_from_thread(self._open_send_form, req, problem)
            self.call_from_thread(
                self.notify,
                problem + (f" (after {exc.sent} sent)" if exc.sent else ""),
                title="Send failed",
                severity="error",
                markup=False,
            )
            return
        trace = ""
        if last is not None:
            try:
                trace = f" · trace {str(last.json().get('trace_id', ''))[:8]}"
            except ValueError:
                pass
        n = req.count
        self.call_from_thread(
            self.notify,
            f"{n} message{'s' if n != 1 else ''} sent to {self.server_url}{req.path} "
            f"({last.status_code if last is not None else '-'}){trace}",
            title="Sent",
            markup=False,
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures land: say so, and restart the long-running ones."""
        if event.state != WorkerState.ERROR or self._stop.is_set():
            return
        err = event.worker.error
        self.notify(
            f"{event.worker.name}: {type(err).__name__}: {err}",
            title="Console worker failed; restarting",
            severity="error",
            markup=False,
        )
        if event.worker.group == "stream":
            self.set_timer(1.0, self._read_stream)
        elif event.worker.group == "poll":
            self.set_timer(1.0, self._poll)

    # -- the render tick ----------------------------------------------------
    def _tick(self) -> None:
        if not self.is_running:
            return  # shutting down: the widgets are being removed
        now = self.now_ms()
        live: list[Event] = []
        while self._announce_q:
            live.append(self._announce_q.popleft())
        if live:
            self._announce(live)
        revs = (self.model.dlq_rev, self.model.state_rev, self.model.workers_rev)
        if revs != self._revs:
            self._revs = revs
            self._poke.set()
        self._announce_link()
        mono = time.monotonic()
        if mono - self._drawn_at >= BUSY_DRAW_S or self.model.all_events.rate(now) < BUSY_RATE:
            self._redraw(now)
        else:
            self._render_topbar(now)
        self.render_count += 1
        if self.render_count == 2:
            # After the first frame. Not call_after_refresh: that waits for a repaint with nothing
            # dirty, which a busy stream may not leave for seconds.
            _settle_gc()
        if self._pending_tab and self.ready:
            self._tabs.active, self._pending_tab = self._pending_tab, None

    def _redraw_now(self) -> None:
        self._redraw(self.now_ms())

    def _redraw(self, now: int) -> None:
        if not self.is_running:
            return  # shutting down: the widgets are being removed
        with self.model_lock:
            self._draw(now)

    def _draw(self, now: int) -> None:
        self._drawn_at = time.monotonic()
        self._render_topbar(now)
        if self.paused:
            return
        view = View(self.model, self.snap, now, self.filter)
        pane = self._pane(self._active)
        if pane.ready:
            pane.show(view)
        screen = self.screen
        if isinstance(screen, TraceScreen):
            screen.add_events(self.model.traces.get(screen.trace_id))

    def _render_topbar(self, now: int) -> None:
        width = self._topbar.size.width or self.size.width
        for level in range(TOPBAR_LEVELS):
            bar = self._topbar_text(now, level)
            if bar.cell_len <= width:
                break
        update(self._topbar, bar, layout=False)

    def _topbar_text(self, now: int, level: int = 0) -> Text:
        """The status bar, shortened by ``level`` (0 = whole) to fit a narrow terminal.

        The worker and dead-letter counts stay whole at every level: the address goes
        first, then the event rate, the link's words and the title.
        """
        m, link = self.model, self.link
        bar = Text.assemble((f" {self.title if level < 4 else 'iii'} ", "bold reverse"), " ")
        if link.connected is False:
            down = int(time.monotonic() - link.down_since)
            bar.append(f"● disconnected {down}s: {link.error} · retrying" if level < 3 else f"● down {down}s", "bold red")
        elif link.connected:
            bar.append("● connected" if level < 3 else "●", "bold green")
        else:
            bar.append("○ connecting…" if level < 3 else "○", "yellow")
        if level < 1:
            bar.append(f"  {self.where}", "bright_black")
            if self.snap.primary:  # under Sentinel: which node the sentinels gave us
                bar.append(f"  primary {self.snap.primary}", "cyan")
            if self.snap.broker != "redis":
                bar.append(f"  {self.snap.broker}", "bold cyan")
        if self.read_only:
            bar.append("  read-only" if level < 3 else " ro", "bold magenta")
        bar.append("  │  " if level < 3 else " │ ", "bright_black")
        bar.append(f"{fmt.num(m.seq)} events", "bold")
        if level < 2:
            bar.append(f" {fmt.rate(m.all_events.rate(now))}", "bright_black")
        sep = "  │  " if level < 3 else " │ "
        workers = len(self.snap.workers)
        bar.append(f"{sep}{workers} worker{'s' if workers != 1 else ''}", "" if workers else "yellow")
        dead = sum(self.snap.dlq_counts.values())
        # "dead" alone reads as dead workers next to the worker count.
        bar.append(f"{sep}{dead} dead letter{'s' if dead != 1 else ''}", "bold red" if dead else "bright_black")
        if m.step_errors:
            bar.append(f"{sep}{len(m.step_errors)} step error{'s' if len(m.step_errors) != 1 else ''}", "bold red")
        if m.redis_last is not None:
            bar.append(f"{sep}{fmt.redis_status(m.redis_restarts, m.redis_last)}", "bold yellow")
        if self.filter:
            bar.append(f"{sep}filter: ", "bright_black")
            bar.append(self.filter.text, "bold cyan")
        if self.paused:
            bar.append(f"{sep}⏸ PAUSED · {fmt.num(m.seq - self._paused_at_seq)} new (p resumes)", "bold black on yellow")
        return bar

    def _announce(self, live: list[Event]) -> None:
        """Toasts for what must not scroll by unseen: step errors and dead letters (not the history read at start)."""
        errors = [e for e in live if e.type == "step.error"]
        for ev in errors[:3]:
            self.notify(printable(f"{ev.step or '?'}: {ev.error}"), title="Step error", severity="error", timeout=8, markup=False)
        dead = [e for e in live if e.type == "message.dead_lettered"]
        if dead:
            dlqs = sorted({str((e.data or {}).get("dlq", "?")) for e in dead if isinstance(e.data, dict)})
            self.notify(
                printable(
                    f"{len(dead)} message{'s' if len(dead) != 1 else ''} dead-lettered → {', '.join(dlqs)}: {dead[-1].error}"
                ),
                title="Dead letter",
                severity="warning",
                markup=False,
            )

    def _announce_link(self) -> None:
        state = (self.link.connected, self.link.outages)
        if state == self._seen_link:
            return
        before, self._seen_link = self._seen_link, state
        if self.link.connected is False:
            self.notify(
                f"Lost Redis: {self.link.error.rstrip('.')}. Retrying; the log resumes where it stopped.",
                title="Disconnected",
                severity="error",
                timeout=6,
                markup=False,
            )
        elif self.link.connected and before[0] is False:
            self.notify(f"Redis is back; resumed after event {self.tail.last_id}.", title="Reconnected", markup=False)

    # -- messages from workers and tabs ---------------------------------------
    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        if not self.is_running:
            return
        self.snap = message.snap
        pane = self._pane(self._active)
        if not self.paused and pane.wants and pane.ready:
            with self.model_lock:
                pane.show(View(self.model, self.snap, self.now_ms(), self.filter))

    def on_open_trace(self, message: OpenTrace) -> None:
        with self.model_lock:
            events = self.model.traces.get(message.trace_id)
        self.push_screen(TraceScreen(message.trace_id, message.message_id, events))
        self._search_trace(message.trace_id)

    def on_trace_found(self, message: TraceFound) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, TraceScreen) and screen.trace_id == message.trace_id:
                screen.add_events(message.events, searched=True)

    def on_state_group_chosen(self, message: StateGroupChosen) -> None:
        self._state_group = message.group
        self._poke.set()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._active = event.pane.id or "live"
        self._poke.set()
        # The tab shows first as it was last drawn; its new data follows right after that frame,
        # so the switch itself is not kept waiting for a rebuild (a table's, the log's catch-up).
        self.call_after_refresh(self._redraw_now)
        self._focus_pane()

    def _pane(self, pid: str) -> Pane:
        """The tab's body, mounted on first use (so start-up styles and lays out one tab, not eight)."""
        pane = self._panes.get(pid)
        if pane is None:
            pane = self._panes[pid] = PANE_CLASSES[pid](id=f"pane-{pid}", read_only=self.read_only)
            self._tabs.get_pane(pid).mount(pane)
        return pane

    def on_pane_ready(self, message: Pane.Ready) -> None:
        if self._panes.get(self._active) is message.control:
            self._redraw(self.now_ms())
            self._focus_pane()

    def _focus_pane(self) -> None:
        """Focus the visible tab's main widget (a focus left in a hidden tab would switch back to it).

        Never while the filter box is open: a tab that finishes mounting after ``/`` was
        pressed would otherwise take the keys being typed into the filter.
        """
        pane = self._pane(self._active)
        focused = self.focused
        if focused is not None and (pane in focused.ancestors or (focused is self._filter_box and focused.display)):
            return
        if not pane.ready:
            self.set_focus(None)  # until it mounts (Pane.Ready), so the hidden tab does not take focus back
            return
        for selector in ("DataTable", "LineTable", "LineLog", "RichLog", "OptionList"):
            for widget in pane.query(selector):
                if widget.focusable:
                    widget.focus()
                    return

    # -- filter -------------------------------------------------------------
    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        """Filter as you type, once typing pauses (each change redraws the visible tab)."""
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DEBOUNCE_S, lambda: self.set_filter(event.value))

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self.set_filter(event.value)
        self._close_filter()

    def set_filter(self, text: str) -> None:
        self.filter = EventFilter.parse(text)
        self._redraw(self.now_ms())

    def clear_filter(self) -> None:
        self._filter_box.value = ""
        self.set_filter("")

    def _close_filter(self) -> None:
        self._filter_box.display = False
        self._focus_pane()

    # -- actions --------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Tab keys and the filter belong to the main screen; over a trace or a form they are off.
        Read-only, sending is off and ``read_only`` (bound, hidden, to the writing keys) says why."""
        if action in ("show_tab", "filter") and len(self.screen_stack) > 1:
            return False
        if action == "filter" and isinstance(self.focused, Input):
            return False  # `/` typed into the filter box (or any field) is text
        if action == "send":
            return not self.read_only
        if action == "read_only":
            return self.read_only
        return True

    def action_read_only(self) -> None:
        self.notify("This console is attached read-only: sending, replay, purge and state edits are off.", severity="warning")

    @property
    def ready(self) -> bool:
        """Drawn once, and the tab bar is mounted (before that, Textual would undo a tab switch)."""
        return self.render_count > 0 and self._tabs.query_one(ContentTabs).is_mounted

    def action_show_tab(self, pid: str) -> None:
        if not self.ready:
            self._pending_tab = pid  # applied by the first tick once the tabs are mounted
            return
        self._tabs.active = pid
        self._active = pid
        self._focus_pane()

    def action_filter(self) -> None:
        box = self._filter_box
        self._filter_before = self.filter.text
        box.value = self.filter.text
        box.display = True
        # Now, not at the next idle (``focus()``): keys pasted or typed in the same burst as
        # ``/`` are already queued, and each must reach the box, not fire a shortcut.
        self.set_focus(box)

    async def on_event(self, event: events.Event) -> None:
        """While the filter box is open, printable keys are text for it, whatever holds the focus."""
        box = getattr(self, "_filter_box", None)
        if (
            isinstance(event, events.Key)
            and not event.is_forwarded
            and event.is_printable
            and box is not None
            and box.display
            and self.focused is not box
            and len(self.screen_stack) == 1
        ):
            self.set_focus(box)
            box.insert_text_at_cursor(event.character or "")
            event.prevent_default()
            event.stop()
            return
        await super().on_event(event)

    async def action_back(self) -> None:
        box = self._filter_box
        if box.display:
            if self._filter_timer is not None:
                self._filter_timer.stop()
            self.set_filter(self._filter_before)
            self._close_filter()
        elif len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.filter:
            self.clear_filter()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._paused_at_seq = self.model.seq
        self._redraw(self.now_ms())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_send(self) -> None:
        if self.read_only:
            self.action_read_only()
            return
        if not self.server_url:
            self.notify(
                "Sending needs a running server: start `iii-console` in the project (this console has no server URL).",
                severity="warning",
                markup=False,
            )
            return
        self._open_send_form()

    def _open_send_form(self, again: SendRequest | None = None, error: str = "") -> None:
        """The send form on the project's POST routes (the registry's), ``again`` refilled with ``error`` shown."""
        from iii_console.core.examples import post_routes

        if self.server_url is None or isinstance(self.screen, SendScreen):
            return
        routes = post_routes(self.snap.steps)
        if self.snap.steps and not routes:
            self.notify(
                "This project has no step taking a JSON POST: send with `iii-console send --topic TOPIC --data JSON` "
                "(the Live view names a topic).",
                severity="warning",
                markup=False,
            )
            return
        self.push_screen(SendScreen(self.server_url, routes, again=again, error=error), self._sent_form)

    def _sent_form(self, req: SendRequest | None) -> None:
        if req is not None:
            self._send(req)

    async def action_quit(self) -> None:
        if self.stop_runtime is None:
            self._stop.set()
            self._poke.set()
            self.exit()
            return
        if self._quitting:
            return
        self._quitting = True
        n = self.model.in_flight
        self.notify(f"stopping… (draining {n} in flight)", title="Quit", timeout=3600, markup=False)
        self.run_worker(self._drain_then_exit(self.stop_runtime), name="quit", exit_on_error=False)

    async def _drain_then_exit(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Stop the runtime (running handlers finish, prefetched messages go back), then exit."""
        try:
            await stop()
        except Exception as exc:  # reported by the caller after the terminal is restored
            self.stop_error = exc
        finally:
            self._stop.set()
            self._poke.set()
            self.exit()

    def on_unmount(self) -> None:
        self._stop.set()
        self._poke.set()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, (pid, label, _) in enumerate(TABS, 1):
            yield SystemCommand(f"Go to {label}", f"Show the {label} tab (key {i})", lambda p=pid: self.action_show_tab(p))
        yield SystemCommand("Pause / resume", "Freeze the view while events keep being read (p)", self.action_pause)
        yield SystemCommand("Filter…", "Filter events, messages and dead letters (/)", self.action_filter)
        yield SystemCommand("Clear filter", "Show everything again", self.clear_filter)
        yield SystemCommand(
            "Show failures only",
            "Filter: failed, retried and dead-lettered messages",
            lambda: self.set_filter("type:message.failed,message.retrying,message.dead_lettered"),
        )
        yield SystemCommand("Show errors only", "Filter: step errors", lambda: self.set_filter("type:step.error"))
        if not self.read_only:
            yield SystemCommand("Send test message", "POST to one of the running server's routes (s)", self.action_send)
            pane = self._panes.get(self._active) if screen is self.screen_stack[0] else None
            if isinstance(pane, DeadLettersPane) and pane.ready:
                yield SystemCommand(
                    "Replay dead letters shown",
                    "Every entry listed under the filter, after confirming (R)",
                    pane.action_replay_shown,
                )
                yield SystemCommand(
                    "Purge dead letters shown",
                    "Delete every entry listed under the filter, after confirming (D)",
                    pane.action_purge_shown,
                )
            if isinstance(pane, StatePane) and pane.ready:
                yield SystemCommand("Edit state value", "Edit the highlighted key's JSON (e)", pane.action_edit)
        yield SystemCommand("Help", "Keys and filter syntax (?)", self.action_help)


_gc_settled = False

#: How often the console hands the C heap's free pages back to the system.
TRIM_S = 30.0


def _trim_heap() -> None:
    """``malloc_trim(0)`` on glibc: free pages inside the heap go back to the system.

    A busy stream replaces thousands of strings and lists a second; glibc keeps the freed
    pages between them, so the resident size creeps up long after what is kept stopped
    growing. Elsewhere (no glibc) nothing is done.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once; ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _settle_gc() -> None:
    """Fewer and shorter garbage-collector passes, once per process, after the first frame.

    The model and the widgets keep ~10^5 objects alive and a busy stream replaces
    thousands a second. With the defaults a pass ran every 700 allocations and a full
    pass every few seconds, walking every object while holding the GIL (measured up to
    ~0.5 s at 5,000 events/s: a key press waited that long). The objects built at
    start-up (Textual, the modules, the first screen) are frozen out of every pass, and
    the youngest generation is collected every 10,000 allocations instead of 700.
    """
    global _gc_settled
    if _gc_settled:
        return
    _gc_settled = True
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, 10_000), middle, old)


def create_app(
    *,
    redis_url: str,
    prefix: str = "iii:",
    server_url: str | None = None,
    read_only: bool = False,
    clock: Callable[[], float] = time.time,
    title: str = "iii-console",
    events_maxlen: int = 100_000,
    broker: Any = None,
) -> ConsoleApp:
    """The console the CLI runs: attach to ``redis_url`` under ``prefix``; ``s`` posts to ``server_url``;
    the events its writes add trim the stream to ``events_maxlen`` (the deployment's ``events.maxlen``).
    ``broker``: replay and run-now on a broker other than Redis (``runtime.brokers.console_broker``), else ``None``."""
    return ConsoleApp(
        redis_url=redis_url,
        keys=Keys(prefix),
        server_url=server_url,
        read_only=read_only,
        clock=clock,
        title=title,
        events_maxlen=events_maxlen,
        broker=broker,
    )
