"""Small dumb widgets shared by the tabs: data is set on them, messages go up."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Footer, RichLog, Sparkline, Static
from textual.widgets.data_table import CellDoesNotExist, ColumnKey

from iii_console.format import TYPE_STYLE
from iii_console.tui import fmt
from iii_console.tui.filter import EventFilter
from iii_console.tui.lines import bounded_put, render_cell, text_key
from iii_console.tui.model import ConsoleModel, RateSeries
from iii_console.tui.source import Snapshot


@dataclass(frozen=True)
class View:
    """What a tab renders from: handed down by the app on every render tick."""

    model: ConsoleModel
    snap: Snapshot
    now_ms: int
    filter: EventFilter


class Pane(Widget):
    """A tab's body: the app calls :meth:`show` with a fresh :class:`View` while it is visible."""

    DEFAULT_CSS = "Pane { height: 1fr; width: 1fr; layout: vertical; }"

    #: Snapshot parts (see :data:`iii_console.tui.source.PARTS`) to poll while this tab is visible.
    wants: frozenset[str] = frozenset()
    #: This tab's actions that write to Redis: on a read-only console they leave the footer and do not run.
    writes: frozenset[str] = frozenset()

    def __init__(self, *, read_only: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.ready = False
        self.read_only = read_only

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (self.read_only and action in self.writes)

    class Ready(Message):
        """A pane mounted (tabs other than Live mount when first shown): time to draw and focus it."""

        def __init__(self, pane: Pane) -> None:
            super().__init__()
            self.pane = pane

        @property
        def control(self) -> Pane:
            return self.pane

    def on_mount(self) -> None:
        self.ready = True  # children are composed and mounted: safe to show
        self.post_message(self.Ready(self))

    def show(self, view: View) -> None:
        raise NotImplementedError


class CounterTile(Vertical):
    """One Live counter: total, per-second rate and a 60 s sparkline."""

    DEFAULT_CSS = """
    CounterTile { height: 5; border: round $panel-lighten-2; padding: 0 1; border-title-align: left; }
    CounterTile > .tile-value { height: 2; }
    CounterTile > Sparkline { height: 1; }
    """

    def __init__(self, label: str, event_type: str, **kw: Any):
        super().__init__(**kw)
        self.label = label
        self.event_type = event_type
        self.border_title = Text(label, style=TYPE_STYLE.get(event_type, "") + " bold")

    def compose(self) -> ComposeResult:
        yield Static("0", classes="tile-value")
        colour = _rgb(TYPE_STYLE.get(self.event_type, ""))
        yield Sparkline([], summary_function=max, max_color=colour, min_color=colour.darken(0.55) if colour else None)

    def show(self, series: RateSeries, now_ms: int, note: str = "") -> None:
        r = series.rate(now_ms)
        top = Text.assemble(
            (fmt.num(series.total), "bold"),
            "\n",
            (fmt.rate(r), TYPE_STYLE.get(self.event_type, "") if r else "bright_black"),
            ("  " + note if note else "", "bright_black"),
        )
        update(self.query_one(".tile-value", Static), top, layout=False)
        data = series.series(now_ms, 60)
        spark = self.query_one(Sparkline)
        if spark.data != data:
            spark.data = data


class KeysFooter(Footer):
    """A footer that rebuilds only when the keys it shows change.

    Textual's recomposes on every change of focus, so every tab switch remounted its
    dozen keys and laid the whole screen out twice more, though Live and Messages show
    the same keys.
    """

    _shown: tuple[Any, ...] | None = None

    def bindings_changed(self, screen: Any) -> None:
        shown = _shown_keys(screen, self.app.COMMAND_PALETTE_BINDING)
        if self._bindings_ready and shown == self._shown and screen is self.screen:
            return
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            self._shown = shown
        super().bindings_changed(screen)

    async def recompose(self) -> None:
        await super().recompose()
        # Each FooterKey binds to the footer's ``compact`` (Textual's ``data_bind``), and Textual
        # drops a closed watcher only when that value changes, which it never does: every key
        # of every rebuild stayed alive (~2 widgets and their queues per `/` or `esc`).
        watchers: dict[str, list[tuple[Any, Any]]] = getattr(self, "__watchers", {})
        for entries in watchers.values():
            entries[:] = [(node, cb) for node, cb in entries if not (node._closing or node._closed)]


def _shown_keys(screen: Any, palette_key: str) -> tuple[Any, ...]:
    """What a footer draws from the screen's active bindings (node identity aside)."""
    return tuple(
        (key, b.action, b.description, b.key_display, b.group, enabled, tooltip)
        for key, (_node, b, enabled, tooltip) in screen.active_bindings.items()
        if b.show or key == palette_key
    )


def update(widget: Static, content: Any, *, layout: bool = True) -> None:
    """Update a Static only when what it shows changes (each update costs a repaint, or a layout)."""
    if getattr(widget, "_iii_shown", None) == content:
        return
    widget._iii_shown = content  # type: ignore[attr-defined]
    widget.update(content, layout=layout)


def retitle(widget: Widget, title: str | None = None, subtitle: str | None = None) -> None:
    """Set border titles only when they change."""
    if title is not None and getattr(widget, "_iii_title", None) != title:
        widget._iii_title = title  # type: ignore[attr-defined]
        widget.border_title = title
    if subtitle is not None and getattr(widget, "_iii_subtitle", None) != subtitle:
        widget._iii_subtitle = subtitle  # type: ignore[attr-defined]
        widget.border_subtitle = subtitle


#: Rendered cells kept by content (:meth:`Table._render_cell`); past this the oldest is dropped.
CELL_CACHE = 4000


class Table(DataTable[Text]):
    """A row-cursor table whose one flexible column (width ``None``) fills the rest of the width.

    Cells are rendered once per content and look: Textual keys its own cell cache by the
    table's update count, so any change (a new row, an age ticking over, the focus
    moving) re-rendered every visible cell through Rich, ~100 ms for a screenful under
    load. Here an unchanged cell is a dictionary hit whatever else changed.
    """

    def __init__(self, columns: Sequence[tuple[str, int | None]], *, title: str = "", **kw: Any):
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self._cells: dict[tuple[Any, ...], list[list[Segment]]] = {}
        self._flex: str | None = None
        for label, width in columns:
            key = label.lower()
            self.add_column(label, width=width or len(label), key=key)
            if width is None:
                self._flex = key
        self.border_title = title

    def show_rows(self, rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
        sync_table(self, rows)
        self.fit()

    def _update_dimensions(self, new_rows: Iterable[Any]) -> None:
        # Textual measures every cell of every new row to size auto-width columns. Ours have
        # fixed widths and one-line rows, so that was pure cost: with a 200-row table rebuilt
        # every second at 5,000 events/s it was ~15 % of the console's CPU.
        if not any(c.auto_width for c in self.columns.values()):
            new_rows = ()
        super()._update_dimensions(new_rows)

    def on_resize(self) -> None:
        self.fit()

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> list[list[Segment]]:
        if row_index < 0 or column_index < 0 or self.fixed_rows or self.fixed_columns:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        row = self.rows.get(row_key) if row_key is not None else None
        cell = self._get_row_renderables(row_index).cells[column_index]
        if row is None or not isinstance(cell, Text) or row.height != 1:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        component_style, post_style = self._get_styles_to_render_cell(
            False,
            False,
            False,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        key = (text_key(cell), width, base_style, component_style, post_style)
        lines = self._cells.get(key)
        if lines is None:
            lines = bounded_put(
                self._cells,
                key,
                render_cell(self.app, cell, width, self.cell_padding, base_style + component_style, post_style),
                CELL_CACHE,
            )
        # What Textual adds to every cell for mouse clicks: which row and column it is.
        meta = Style.from_meta({"row": row_index, "column": column_index})
        return [[Segment(seg.text, (seg.style + meta) if seg.style else meta, seg.control) for seg in line] for line in lines]

    def fit(self) -> None:
        if self._flex is None or not self.size.width:
            return
        pad = 2 * self.cell_padding
        flex = self.columns[ColumnKey(self._flex)]
        fixed = sum(c.get_render_width(self) for c in self.columns.values() if c is not flex)
        width = max(len(flex.label), self.scrollable_content_region.width - fixed - pad)
        if flex.width != width or flex.auto_width:
            flex.width, flex.auto_width = width, False
            self._require_update_dimensions = True  # textual: recompute the virtual width
            self._update_count += 1
            self.refresh()


class EventList(RichLog):
    """A short, newest-first list of events (cron runs, worker starts and stops)."""

    def __init__(self, *, title: str, line: Any = None, **kw: Any):
        super().__init__(wrap=False, markup=False, highlight=False, auto_scroll=False, **kw)
        self.border_title = title
        self._line = line or fmt.event_line
        self._key: Any = None

    def show_events(self, events: Sequence[Any], *, empty: str) -> None:
        key = (len(events), events[-1].id if events else None)
        if key == self._key:
            return
        self._key = key
        self.clear()
        if not events:
            self.write(Text(empty, style="bright_black"))
            return
        self.write(Text("\n").join(self._line(e) for e in reversed(events)))


def _rgb(style: str) -> Color | None:
    """The colour of a Rich style string (``"bold red"``) as a Textual colour."""
    from rich.errors import StyleSyntaxError
    from rich.style import Style

    try:
        c = Style.parse(style).color
    except StyleSyntaxError:
        return None
    if c is None:
        return None
    r, g, b = c.get_truecolor()
    return Color(r, g, b)


def sync_table(table: DataTable, rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Make ``table`` show ``rows`` (key, cells), touching only what changed.

    Same keys in the same order: changed cells are updated in place. Otherwise
    the table is rebuilt and the cursor stays on the same row key (or on the
    first row, if it was there: following the newest).
    """
    keys = [k for k, _ in rows]
    current = [rk.value for rk in table.rows]
    if keys == current:
        cols = [c.key for c in table.ordered_columns]
        for key, cells in rows:
            old = table.get_row(key)
            for col, new, was in zip(cols, cells, old):
                if new != was:
                    table.update_cell(key, col, new)
        return
    selected = current[table.cursor_row] if current and 0 <= table.cursor_row < len(current) else None
    at_top = table.cursor_row == 0
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys and not at_top:
        table.move_cursor(row=keys.index(selected), animate=False)


def cursor_key(table: DataTable) -> str | None:
    if not table.row_count:
        return None
    try:
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except CellDoesNotExist:  # the table is mid-rebuild
        return None


def t(value: Any, style: str = "", *, justify: str | None = None) -> Text:
    """A cell: always Text, so user data with brackets is never read as markup."""
    return Text(
        "-" if value is None or value == "" else fmt.plain(value),
        style=style,
        justify=justify,  # type: ignore[arg-type]
        no_wrap=True,
        overflow="ellipsis",
    )


def n(value: int | float | None, style: str = "") -> Text:
    if value is None:
        return Text("-", style="bright_black", justify="right")
    return Text(fmt.num(value), style=style if value else "bright_black", justify="right")


def lines(parts: Iterable[Text | str]) -> Text:
    return Text("\n").join(p if isinstance(p, Text) else Text(fmt.plain(p, keep_lines=True)) for p in parts)
