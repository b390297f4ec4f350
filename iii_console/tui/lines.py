"""Line-based views: only the visible lines are drawn, each from a strip rendered once per content.

Textual's ``DataTable`` and ``RichLog`` re-render through Rich whenever anything changes: a
table rebuilt or focused re-rendered every visible cell, a log rewritten after a filter
change rendered every line it was given. These draw a line from a cached :class:`Strip`
keyed by what it shows, so a rebuild, a focus change or a moved cursor costs a dictionary
hit per visible line, and the cursor row is the only one restyled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, ClassVar

from rich.padding import Padding
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.renderables.styled import Styled
from textual.scroll_view import ScrollView
from textual.strip import Strip

#: Rendered table rows kept by content and look (a few screens: ages tick every second, so
#: older ones are not drawn again); past this the oldest is dropped.
STRIP_CACHE = 400
#: Rendered table cells kept by content and look; past this the oldest is dropped.
CELL_CACHE = 2000
#: Log lines holding their rendered strip (the last ones drawn: a few screens).
LOG_STRIPS = 300


def _strips_without_self_references() -> None:
    """Textual's ``Strip`` stores its result in its own caches, and two of its methods can
    return the strip itself: ``divide`` at a single cut at its end (what the compositor does
    to nearly every line of every frame) and ``crop_extend`` to its own length. Such a strip
    then refers to itself through its cache, so it is freed only by a full pass of the cycle
    collector, not when the frame is done with it: dead strips (each with its seven
    ``FIFOCache`` dicts and its segments) piled up between two passes, a few MB at 5,000
    events/s, and the piles pushed the allocator into more arenas. These two cases now
    return the strip without caching it: the same strips, no cycle.
    """
    if getattr(Strip, "_iii_no_self_cache", False):
        return
    divide, crop_extend = Strip.divide, Strip.crop_extend

    def divide_no_cycle(self: Strip, cuts: Iterable[int]) -> Sequence[Strip]:
        cuts = list(cuts)
        length = self.cell_length
        if [cut for cut in cuts if cut <= length] == [length]:
            return [self]
        return divide(self, cuts)

    def crop_extend_no_cycle(self: Strip, start: int, end: int, style: Style | None) -> Strip:
        if start <= 0 and end == self.cell_length:
            return self
        return crop_extend(self, start, end, style)

    Strip.divide = divide_no_cycle  # type: ignore[method-assign]
    Strip.crop_extend = crop_extend_no_cycle  # type: ignore[method-assign]
    Strip._iii_no_self_cache = True  # type: ignore[attr-defined]


_strips_without_self_references()


def _inner_outer_by_colours() -> None:
    """Textual's ``StylesCache.get_inner_outer`` is an ``lru_cache(1024)`` on an instance method,
    so its key holds the ``StylesCache`` of every widget that drew (and, through it, the strips
    that widget last drew) until 1,024 later keys push it out. The footer's keys, made again
    whenever the bindings change (a tab switched, a filter opened), stayed alive that way, seven
    at a time: at 5,000 events/s with a key pressed every 1.5 s the console's memory grew by
    about 0.35 MB a minute for the better part of an hour. The result depends on the two colours
    alone; it is now cached by them alone (Textual is pinned at 8.2.8).
    """
    from textual._styles_cache import StylesCache

    if getattr(StylesCache, "_iii_inner_outer", False):
        return
    original = StylesCache.get_inner_outer.__wrapped__

    @lru_cache(1024)
    def inner_outer(base_background: Any, background: Any) -> Any:
        return original(None, base_background, background)

    def get_inner_outer(self: StylesCache, base_background: Any, background: Any) -> Any:
        return inner_outer(base_background, background)

    StylesCache.get_inner_outer = get_inner_outer  # type: ignore[assignment,method-assign]
    StylesCache._iii_inner_outer = True  # type: ignore[attr-defined]


_inner_outer_by_colours()

#: Segments cut at a cell position that Rich keeps (``Segment._split_cells``; Rich's own size is 16,384).
#: A screen's worth of cuts fits; 256 fill within a minute of a busy stream, so the memory they
#: take stops growing soon after start (1,024 took five minutes).
SPLIT_CACHE = 256


def _split_cells_bounded() -> None:
    """Rich caches every segment it cuts at a cell position (``Segment._split_cells``, an
    ``lru_cache`` of 16,384 cuts). A log line cut at the edge of the view is cut once, and each
    new line was a new entry: at 5,000 events/s the cache took ~220 entries a minute (two
    segments, their texts and two tuples each) and was full only after more than an hour, about
    half of the console's memory growth until then. What is cut frame after frame (borders,
    labels, the rows on screen) fits in far fewer: the cache keeps :data:`SPLIT_CACHE`.
    """
    if getattr(Segment, "_iii_split_cells", False):
        return
    cached = vars(Segment).get("_split_cells")
    original = getattr(getattr(cached, "__func__", None), "__wrapped__", None)
    if original is None:  # not the cached class method this was written for: leave it
        return
    Segment._split_cells = classmethod(lru_cache(SPLIT_CACHE)(original))  # type: ignore[method-assign,assignment,arg-type]
    Segment._iii_split_cells = True  # type: ignore[attr-defined]


_split_cells_bounded()


def bounded_put(cache: dict[Any, Any], key: Any, value: Any, cap: int) -> Any:
    """``cache[key] = value``, dropping the oldest entry first when ``cap`` are held; returns ``value``.

    One at a time, not the whole cache at once: a cache that fills steadily (ages tick,
    rows change) and was emptied wholesale freed a few MB of small objects in one go and
    rebuilt them among whatever the reader had allocated meanwhile, a swing that can leave
    Python's allocator holding more partly used arenas.
    """
    if len(cache) >= cap:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


def _sync_scrollbar(view: ScrollView) -> None:
    """A scroll made before the scrollbar first showed (``force``) did not move its thumb."""
    if view.show_vertical_scrollbar and view.vertical_scrollbar.position != view.scroll_y:
        view.vertical_scrollbar.position = view.scroll_y


def text_key(cell: Text) -> tuple[Any, ...]:
    """What a cell's rendering depends on besides its width and look (a cache key)."""
    return (cell.plain, cell.style, tuple(cell.spans), cell.justify, cell.overflow)


def render_cell(app: Any, cell: Text, width: int, padding: int, pre: Style, post: Style) -> list[list[Segment]]:
    """A table cell rendered as ``DataTable`` renders it: padded, on one line, ``pre`` under its own
    styles and ``post`` over them (the cursor's colours); its lines of segments."""
    opts = app.console_options.update_dimensions(width, 1).update(no_wrap=True)
    return app.console.render_lines(Styled(Padding(cell, (0, padding)), pre_style=pre, post_style=post), opts)


class _Row:
    __slots__ = ("cells", "key", "sig")

    def __init__(self, key: str, cells: Sequence[Text]) -> None:
        self.key = key
        self.cells = tuple(cells)
        self.sig: tuple[Any, ...] | None = None

    def signature(self) -> tuple[Any, ...]:
        if self.sig is None:
            self.sig = tuple(text_key(c) for c in self.cells)
        return self.sig


class LineTable(ScrollView, can_focus=True):
    """A row-cursor table of one-line rows under a fixed header, drawn line by line.

    It looks as the project's ``DataTable`` tables do (header, zebra stripes, a cursor row
    styled by focus) and keeps their keys: up/down, page up/down, home/end, enter (or a click
    on the cursor row) selects; a click moves the cursor. Each row's strip is rendered once
    per content, width and look, so rows shifting down under a new one are cache hits.
    One column (width ``None``) takes the width the others leave.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "datatable--header",
        "datatable--cursor",
        "datatable--even-row",
        "datatable--odd-row",
        "datatable--hover",
    }

    DEFAULT_CSS = """
    LineTable {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;
        &:focus {
            background-tint: $foreground 5%;
            & > .datatable--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .datatable--header {
                background-tint: $foreground 5%;
            }
        }
        &:dark {
            & > .datatable--even-row {
                background: $surface-darken-1 40%;
            }
        }
        & > .datatable--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        &:ansi > .datatable--header {
            background: ansi_bright_blue;
            color: ansi_default;
        }
        & > .datatable--odd-row {
        }
        & > .datatable--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .datatable--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        & > .datatable--hover {
            background: $block-hover-background;
        }
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,ctrl+home", "first", "Top", show=False),
        Binding("end,ctrl+end", "last", "Bottom", show=False),
        Binding("left", "scroll_left", "Scroll left", show=False),
        Binding("right", "scroll_right", "Scroll right", show=False),
    ]

    class RowSelected(Message):
        """Enter on a row, or a click on the cursor row."""

        def __init__(self, table: LineTable, row_key: str, cursor_row: int) -> None:
            super().__init__()
            self.table = table
            self.row_key = row_key
            self.cursor_row = cursor_row

        @property
        def control(self) -> LineTable:
            return self.table

    def __init__(self, columns: Sequence[tuple[str, int | None]], *, title: str = "", **kw: Any) -> None:
        super().__init__(**kw)
        self.cell_padding = 1
        self.labels = tuple(Text(label) for label, _ in columns)
        self._widths: list[int | None] = [w for _, w in columns]
        self._rows: list[_Row] = []
        self._index: dict[str, int] = {}
        self._strips: dict[tuple[Any, ...], Strip] = {}
        self._cells: dict[tuple[Any, ...], list[Segment]] = {}
        self._look: tuple[Any, ...] = ()
        self.cursor_row = 0
        #: The row under the mouse (highlighted until a key moves the cursor), else None.
        self.hover_row: int | None = None
        self.border_title = title

    # -- data -----------------------------------------------------------------
    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def row_keys(self) -> list[str]:
        return [r.key for r in self._rows]

    def get_row(self, key: str) -> tuple[Text, ...]:
        return self._rows[self._index[key]].cells

    @property
    def cursor_key(self) -> str | None:
        return self._rows[self.cursor_row].key if 0 <= self.cursor_row < len(self._rows) else None

    def show_rows(self, rows: Sequence[tuple[str, Sequence[Text]]]) -> None:
        """Show ``rows`` (key, cells). The cursor stays on its row's key, or on the first row
        if it was there (following the newest); an unchanged row keeps its rendered strip."""
        selected = self.cursor_key
        at_top = self.cursor_row == 0
        old = {r.key: r for r in self._rows}
        new: list[_Row] = []
        for key, cells in rows:
            was = old.get(key)
            new.append(was if was is not None and was.cells == tuple(cells) else _Row(key, cells))
        self._rows = new
        self._index = {r.key: i for i, r in enumerate(new)}
        if not at_top and selected in self._index:
            self.cursor_row = self._index[selected]
        self.cursor_row = max(0, min(self.cursor_row, len(new) - 1))
        self._sync_size()
        self.refresh()

    def _sync_size(self) -> None:
        # Narrower than its columns, the table scrolls sideways (left / right), as DataTable did.
        self.virtual_size = Size(max(sum(self._column_widths()), self.scrollable_content_region.width), len(self._rows) + 1)

    def on_resize(self) -> None:
        self._sync_size()

    # -- cursor ---------------------------------------------------------------
    def move_cursor(self, *, row: int, animate: bool = False) -> None:
        if not self._rows:
            return
        row = max(0, min(row, len(self._rows) - 1))
        if row != self.cursor_row:
            self.refresh_line(self.cursor_row + 1 - self.scroll_offset.y)
            self.cursor_row = row
            self.refresh_line(row + 1 - self.scroll_offset.y)
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        height = self.scrollable_content_region.height - 1  # under the header
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True, force=True)
        elif height > 0 and self.cursor_row >= top + height:
            self.scroll_to(y=self.cursor_row - height + 1, animate=False, immediate=True, force=True)

    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def action_cursor_up(self) -> None:
        self._set_hover(None)
        self.move_cursor(row=self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self._set_hover(None)
        self.move_cursor(row=self.cursor_row + 1)

    def action_page_up(self) -> None:
        self._set_hover(None)
        self.move_cursor(row=self.cursor_row - self._page())

    def action_page_down(self) -> None:
        self._set_hover(None)
        self.move_cursor(row=self.cursor_row + self._page())

    def action_first(self) -> None:
        self._set_hover(None)
        self.move_cursor(row=0)

    def action_last(self) -> None:
        self._set_hover(None)
        self.move_cursor(row=len(self._rows) - 1)

    def action_select_cursor(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.RowSelected(self, key, self.cursor_row))

    def _row_at(self, event: events.MouseEvent) -> int | None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return None  # the border or the header
        row = int(self.scroll_y) + offset.y - 1
        return row if 0 <= row < len(self._rows) else None

    def _set_hover(self, row: int | None) -> None:
        if row != self.hover_row:
            for old in (self.hover_row, row):
                if old is not None:
                    self.refresh_line(old + 1 - int(self.scroll_y))
            self.hover_row = row

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self._set_hover(self._row_at(event))

    def on_leave(self, event: events.Leave) -> None:
        self._set_hover(None)

    def on_click(self, event: events.Click) -> None:
        row = self._row_at(event)
        if row is None:
            return
        event.stop()
        if row == self.cursor_row:
            self.action_select_cursor()
        else:
            self.move_cursor(row=row)

    # -- drawing ----------------------------------------------------------------
    def render_lines(self, crop: Region) -> list[Strip]:
        # What every line's look depends on, read once per frame (focus changes the cursor's).
        get = self.get_component_rich_style
        cursor = get("datatable--cursor")
        look = (
            max(self.size.width, self.virtual_size.width),
            tuple(self._column_widths()),
            self.rich_style,
            get("datatable--header"),
            get("datatable--even-row"),
            get("datatable--odd-row"),
            cursor,
            get("datatable--hover"),
        )
        # Not a reason to drop what is cached: focus comes and goes with every tab switch, and
        # the strips for both looks are kept (they are keyed by it).
        self._look = look
        _sync_scrollbar(self)
        return super().render_lines(crop)

    def _column_widths(self) -> list[int]:
        """Rendered widths (padding included); the flexible column takes what is left."""
        pad = 2 * self.cell_padding
        fixed = [max(w or 0, len(label)) + pad if w is not None else 0 for w, label in zip(self._widths, self.labels)]
        rest = self.scrollable_content_region.width - sum(fixed)
        return [f if w is not None else max(len(label) + pad, rest) for f, w, label in zip(fixed, self._widths, self.labels)]

    def render_line(self, y: int) -> Strip:
        width, widths, base, header, even, odd, cursor, hover = self._look
        if y == 0:
            key: tuple[Any, ...] = ("header", self._look)
            cells: Sequence[Text] = self.labels
            pre, post_style, extend = header, Style.null(), header
        else:
            row = int(self.scroll_y) + y - 1
            if row >= len(self._rows):
                return Strip.blank(self.size.width, base)
            data = self._rows[row]
            row_style = odd if row % 2 else even
            at = row == self.cursor_row
            under = row == self.hover_row
            key = (data.signature(), row % 2, at, under, self._look)
            cells = data.cells
            # As DataTable: the hover's and the cursor's styles over the stripe, their colours again on top.
            over = (hover if under else Style.null()) + (cursor if at else Style.null())
            pre = row_style + over
            post_style = Style.from_color(over.color) + Style.from_color(bgcolor=over.bgcolor) if over else Style.null()
            extend = pre
        strip = self._strips.get(key)
        if strip is None:
            strip = bounded_put(
                self._strips, key, self._render_row(cells, widths, width, base, pre, post_style, extend), STRIP_CACHE
            )
        shown = self.size.width
        if width > shown:  # scrolled sideways, or wider than the view
            x = int(self.scroll_x)
            return strip.crop(x, x + shown)
        return strip

    def _render_row(
        self, cells: Sequence[Text], widths: Sequence[int], width: int, base: Style, pre: Style, post: Style, extend: Style
    ) -> Strip:
        """One row's strip from its cells' segments, each rendered once per content, width and look
        (a row whose age ticked over re-renders one cell, not ten)."""
        segments: list[Segment] = []
        cache = self._cells
        for cell, w in zip(cells, widths):
            key = (text_key(cell), w, pre, post)
            line = cache.get(key)
            if line is None:
                line = bounded_put(cache, key, render_cell(self.app, cell, w, self.cell_padding, pre, post)[0], CELL_CACHE)
            segments.extend(line)
        used = sum(widths)
        if width > used:
            segments.append(Segment(" " * (width - used), extend))
        return Strip(segments).adjust_cell_length(width, base).simplify()


class _Line:
    __slots__ = ("make", "strip")

    def __init__(self, make: Text | Callable[[], Text]) -> None:
        self.make = make
        self.strip: Strip | None = None


class LineLog(ScrollView, can_focus=True):
    """A log of one-line entries, each rendered to a strip only when it is first on screen.

    ``write_lines`` takes a ``Text`` or a function making one (an event's line), so lines
    written and scrolled past unseen, or replaced by a filter change, cost no Rich rendering.
    At most ``max_lines`` are kept; rendered strips are kept for the last few screens drawn (:data:`LOG_STRIPS`).
    Lines longer than the width are cut, as the log does not scroll sideways.
    """

    DEFAULT_CSS = """
    LineLog {
        background: $surface;
        color: $foreground;
        overflow-y: scroll;
        overflow-x: hidden;
        &:focus {
            background-tint: $foreground 5%;
        }
    }
    """

    def __init__(self, *, max_lines: int = 1000, auto_scroll: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.max_lines = max_lines
        self.auto_scroll = auto_scroll
        self._lines: deque[_Line] = deque(maxlen=max_lines)
        #: The lines holding a rendered strip, oldest drawn first (their strips are dropped past LOG_STRIPS).
        self._drawn: deque[_Line] = deque()
        self._width = 0
        self._style = Style.null()
        self._look: tuple[int, Style] | None = None

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def plain_lines(self) -> list[str]:
        """Every line held, as text (renders nothing)."""
        return [(ln.make if isinstance(ln.make, Text) else ln.make()).plain for ln in self._lines]

    def clear(self) -> LineLog:
        self._lines.clear()
        self._drop_strips()
        self.virtual_size = Size(self.virtual_size.width, 0)
        self.scroll_to(y=0, animate=False, immediate=True, force=True)
        self.refresh()
        return self

    def write_lines(self, lines: Sequence[Text | Callable[[], Text]], *, scroll_end: bool | None = None) -> LineLog:
        if not lines:
            return self
        self._lines.extend(_Line(make) for make in lines[-self.max_lines :])
        self.virtual_size = Size(self.scrollable_content_region.width, len(self._lines))
        if self.auto_scroll if scroll_end is None else scroll_end:
            # Now, not after the next refresh: that frame would draw (and render) lines at the
            # old position, never to be seen.
            if self.size.height:
                self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)
            else:  # not laid out yet: once it is
                self.scroll_end(animate=False, immediate=False, x_axis=False)
        self.refresh()
        return self

    def _drop_strips(self) -> None:
        for ln in self._drawn:
            ln.strip = None
        self._drawn.clear()

    def render_lines(self, crop: Region) -> list[Strip]:
        look = (self.scrollable_content_region.width, self.rich_style)
        if look != self._look:
            self._width, self._style = self._look = look
            self._drop_strips()
        _sync_scrollbar(self)
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        index = int(self.scroll_y) + y
        width = self._width
        if not 0 <= index < len(self._lines):
            return Strip.blank(width, self._style)
        ln = self._lines[index]
        if ln.strip is None:
            text = ln.make if isinstance(ln.make, Text) else ln.make()
            # Rendered whole and then cut (no ellipsis), as RichLog draws an over-long line.
            opts = self.app.console_options.update_width(max(width, text.cell_len)).update(overflow="ignore", no_wrap=True)
            first = next(iter(Segment.split_lines(self.app.console.render(text, opts))), [])
            ln.strip = Strip(first).crop_extend(0, width, self._style).apply_style(self._style)
            self._drawn.append(ln)
            if len(self._drawn) > LOG_STRIPS:
                self._drawn.popleft().strip = None
        return ln.strip
