"""The line views (``tui/lines.py``): keys, cursor, selection, mouse, lazy drawing and caching."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.strip import Strip

from iii_console.tui import lines
from iii_console.tui.lines import LineLog, LineTable, bounded_put

pytestmark = pytest.mark.anyio

COLUMNS = (("Id", 6), ("Name", 10), ("Note", None))


def rows(n: int, start: int = 0, note: str = "x") -> list[tuple[str, list[Text]]]:
    return [(f"k{i}", [Text(f"{i}"), Text(f"name {i}"), Text(f"{note} {i}")]) for i in range(start + n - 1, start - 1, -1)]


class Host(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.selected: list[str] = []

    def compose(self) -> ComposeResult:
        yield LineTable(COLUMNS, title="T", id="table")
        yield LineLog(id="log", max_lines=50)

    def on_line_table_row_selected(self, event: LineTable.RowSelected) -> None:
        self.selected.append(event.row_key)


async def test_table_keys_move_the_cursor_and_enter_selects() -> None:
    app = Host()
    async with app.run_test(size=(80, 14)) as pilot:
        app.query_one("#log").styles.height = 3
        table = app.query_one(LineTable)
        table.styles.height = 10
        table.show_rows(rows(30))
        table.focus()
        await pilot.pause()
        assert table.row_count == 30 and table.cursor_key == "k29"
        await pilot.press("down", "down")
        assert table.cursor_row == 2
        await pilot.press("up")
        assert table.cursor_row == 1
        page = table.scrollable_content_region.height - 1
        await pilot.press("pagedown")
        assert table.cursor_row == 1 + page
        assert table.scroll_y > 0, "the cursor row is scrolled into view"
        await pilot.press("end")
        assert table.cursor_row == 29
        top = int(table.scroll_y)
        assert top <= 29 < top + page
        await pilot.press("home")
        assert table.cursor_row == 0 and table.scroll_y == 0
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.selected == ["k28"]


async def test_table_cursor_keeps_its_row_or_follows_the_newest() -> None:
    app = Host()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(LineTable)
        table.show_rows(rows(5))
        await pilot.pause()
        table.move_cursor(row=2)  # k2
        table.show_rows(rows(7))  # two newer rows on top
        assert table.cursor_key == "k2" and table.cursor_row == 4
        table.move_cursor(row=0)
        table.show_rows(rows(8))
        assert table.cursor_row == 0 and table.cursor_key == "k7", "at the top it follows the newest"
        table.move_cursor(row=3)
        table.show_rows(rows(2))  # its row went: the cursor stays in range
        assert table.cursor_row == 1
        table.show_rows([])
        assert table.row_count == 0 and table.cursor_key is None
        await pilot.press("down", "enter")  # nothing to select
        assert app.selected == []


async def test_table_click_moves_the_cursor_and_a_second_click_selects() -> None:
    app = Host()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(LineTable)
        table.show_rows(rows(5))
        await pilot.pause()
        # The header is line 0: the third row (k2) is line 3.
        await pilot.click(LineTable, offset=(10, 3))
        assert table.cursor_key == "k2" and app.selected == []
        await pilot.click(LineTable, offset=(10, 3))
        await pilot.pause()
        assert app.selected == ["k2"]
        await pilot.click(LineTable, offset=(10, 0))  # the header: nothing
        assert table.cursor_key == "k2"


class Bordered(Host):
    CSS = "LineTable { border: round red; height: 8; }"


async def test_table_click_inside_a_border_and_scrolled() -> None:
    app = Bordered()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(LineTable)
        table.show_rows(rows(30))
        await pilot.pause()
        table.move_cursor(row=20)
        await pilot.pause()
        top = int(table.scroll_y)
        assert top > 0
        # The border is line 0 and the header line 1: line 2 is the first row shown.
        await pilot.click(LineTable, offset=(10, 2))
        assert table.cursor_row == top


async def test_table_draws_the_header_rows_and_a_distinct_cursor_row() -> None:
    app = Host()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(LineTable)
        table.show_rows(rows(3))
        table.focus()
        await pilot.pause()
        text = [table.render_line(y).text for y in range(5)]
        assert text[0].split() == ["Id", "Name", "Note"]
        assert text[1].split() == ["2", "name", "2", "x", "2"]
        assert text[3].split() == ["0", "name", "0", "x", "0"]
        assert text[4].strip() == ""
        assert all(len(t) == table.size.width for t in text)
        cursor_bg = {s.style.bgcolor for s in table.render_line(1) if s.style and s.text.strip()}
        other_bg = {s.style.bgcolor for s in table.render_line(3) if s.style and s.text.strip()}
        assert cursor_bg and cursor_bg != other_bg


async def test_table_renders_a_cell_once_per_content() -> None:
    """Rows moving down under new ones, focus coming and going: no cell is rendered again."""
    app = Host()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(LineTable)
        table.show_rows(rows(6))
        await pilot.pause()
        table.focus()
        await pilot.pause()
        table.blur()
        await pilot.pause()
        cells = len(table._cells)
        table.show_rows(rows(8))  # two new rows on top: the others keep their stripe
        await pilot.pause()
        table.focus()
        await pilot.pause()
        table.blur()
        await pilot.pause()
        # The two new rows' three cells, in each look (focused or not; one of them under the cursor).
        assert len(table._cells) - cells <= 2 * 3 * 2 + 3 * 2
        table.show_rows(rows(8, note="y"))  # one column changed in every row
        await pilot.pause()
        # Only the changed cells (plus the cursor row's): not whole rows.
        assert len(table._cells) - cells <= 2 * 3 * 2 + 3 * 2 + 8 + 3


def test_a_full_cache_drops_its_oldest_entry_not_everything() -> None:
    """Given a cache at its cap, when one more entry goes in, then only the oldest is dropped."""
    cache: dict[str, int] = {}
    for i in range(10):
        assert bounded_put(cache, f"k{i}", i, 4) == i
    assert list(cache) == ["k6", "k7", "k8", "k9"]


async def test_table_caches_stay_at_their_caps_as_rows_keep_changing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given rows whose text changes on every draw (ages ticking over), when drawn many times, then the row and cell
    caches hold at most their caps and keep the strips of the rows shown now."""
    monkeypatch.setattr(lines, "STRIP_CACHE", 30)
    monkeypatch.setattr(lines, "CELL_CACHE", 60)
    app = Host()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(LineTable)
        for tick in range(40):
            table.show_rows(rows(8, note=f"t{tick}"))
            await pilot.pause()
            assert len(table._strips) <= 30 and len(table._cells) <= 60
        assert len(table._strips) == 30  # full, not emptied
        drawn = {key[0] for key in table._strips}
        assert all(r.signature() in drawn for r in table._rows)  # what is on screen is still cached


async def test_drawn_strips_are_freed_when_dropped_not_left_to_the_cycle_collector() -> None:
    """Given a table and a log redrawn for a few frames with the collector off, when what they left is
    collected, then no strip is among it: none refers to itself through its own caches (Textual's
    ``divide`` and ``crop_extend`` did), so each is freed as soon as the frame drops it."""
    app = Host()
    async with app.run_test(size=(80, 20)) as pilot:
        table, log = app.query_one(LineTable), app.query_one(LineLog)
        gc.collect()
        gc.disable()
        try:
            for tick in range(10):
                table.show_rows(rows(8, note=f"t{tick}"))
                log.write_lines([Text(f"line {tick}.{i}") for i in range(30)])
                await pilot.pause()
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cyclic = [o for o in gc.garbage if isinstance(o, Strip)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            gc.collect()
        assert len(cyclic) == 0


async def test_log_renders_only_the_lines_it_shows() -> None:
    app = Host()
    made: list[int] = []

    def line(i: int) -> Any:
        def make() -> Text:
            made.append(i)
            return Text(f"line {i}")

        return make

    async with app.run_test(size=(60, 20)) as pilot:
        log = app.query_one(LineLog)
        app.query_one(LineTable).display = False
        log.styles.height = 6
        await pilot.pause()
        log.write_lines([line(i) for i in range(100)])
        await pilot.pause()
        assert log.line_count == 50, "max_lines"
        assert log.is_vertical_scroll_end, "it follows the end"
        assert sorted(made) == list(range(94, 100)), "only the six lines on screen were rendered"
        assert [log.render_line(y).text.rstrip() for y in range(6)] == [f"line {i}" for i in range(94, 100)]
        made.clear()
        log.scroll_to(y=0, animate=False, immediate=True)
        await pilot.pause()
        assert sorted(made) == list(range(50, 56))
        log.write_lines([Text("more")], scroll_end=False)
        await pilot.pause()
        assert log.scroll_y == 0, "scrolled back, it stays"
        assert log.plain_lines()[-2:] == ["line 99", "more"]
        log.clear()
        await pilot.pause()
        assert log.line_count == 0 and log.plain_lines() == []
        assert log.render_line(0).text.strip() == ""


async def test_log_cuts_a_long_line_without_an_ellipsis() -> None:
    app = Host()
    async with app.run_test(size=(30, 20)) as pilot:
        log = app.query_one(LineLog)
        app.query_one(LineTable).display = False
        log.write_lines([Text("x" * 100, overflow="ellipsis")])
        await pilot.pause()
        drawn = log.render_line(0).text
        assert len(drawn) == log.scrollable_content_region.width and set(drawn) == {"x"}


class Framed(Host):
    CSS = "LineLog { height: 10; border: round red; overflow-y: auto; } LineTable { display: none; }"


async def test_log_follows_the_end_over_many_writes() -> None:
    """As the Live tab writes: follow while at the end, from before the scrollbar first shows."""
    app = Framed()
    async with app.run_test(size=(60, 20)) as pilot:
        log = app.query_one(LineLog)
        await pilot.pause()
        for i in range(12):
            follow = log.is_vertical_scroll_end or log.max_scroll_y == 0
            log.write_lines([Text(f"l{i}-{j}") for j in range(7)], scroll_end=follow)
            assert follow, f"write {i}: still at the end"
            await pilot.pause()
        assert log.scroll_y == log.max_scroll_y > 0
        assert log.render_line(log.scrollable_content_region.height - 1).text.strip() == "l11-6"


class WithFooter(App[None]):
    BINDINGS: ClassVar[list[Any]] = [("q", "quit", "Quit"), ("p", "pause", "Pause")]

    def compose(self) -> ComposeResult:
        from textual.widgets import Input

        from iii_console.tui.widgets import KeysFooter

        yield LineLog(id="log")
        yield Input(id="box")
        yield KeysFooter()


async def _rebuild_footer(app: WithFooter, pilot: Any, times: int) -> None:
    """Move the focus back and forth: the keys shown change with it, so the footer rebuilds each time."""
    from textual.widgets import Input

    for _ in range(times):
        app.query_one(Input).focus()
        await pilot.pause()
        app.query_one(LineLog).focus()
        await pilot.pause()
    await pilot.pause(0.3)


@asynccontextmanager
async def _footer_rebuilt(kind: type, times: int = 20) -> AsyncIterator[tuple[WithFooter, list[Any]]]:
    """A footer rebuilt ``times`` times, and the objects of ``kind`` alive after a collection that were
    not alive before it started (those left by earlier tests in this process are not its own)."""
    gc.collect()
    earlier = weakref.WeakSet(o for o in gc.get_objects() if isinstance(o, kind))
    app = WithFooter()
    async with app.run_test(size=(80, 20)) as pilot:
        await pilot.pause()
        await _rebuild_footer(app, pilot, times)
        gc.collect()
        yield app, [o for o in gc.get_objects() if isinstance(o, kind) and o not in earlier]


async def test_footer_rebuilds_do_not_keep_their_old_keys_alive() -> None:
    """Textual keeps every FooterKey a footer ever composed (a data binding never dropped)."""
    from textual.widgets._footer import FooterKey

    async with _footer_rebuilt(FooterKey) as (app, alive):
        assert len(alive) <= 2 * len(app.query(FooterKey)), len(alive)


async def test_table_narrower_than_its_columns_scrolls_sideways() -> None:
    app = Host()
    async with app.run_test(size=(18, 12)) as pilot:
        app.query_one(LineLog).display = False
        table = app.query_one(LineTable)
        table.show_rows(rows(3))
        table.focus()
        await pilot.pause()
        assert table.virtual_size.width == 8 + 12 + 6 > table.size.width
        assert "Note" not in table.render_line(0).text
        for _ in range(10):
            await pilot.press("right")
        await pilot.pause()
        assert table.scroll_x > 0
        header, first = table.render_line(0).text, table.render_line(1).text
        assert "Note" in header and "x 2" in first
        assert len(header) == len(first) == table.size.width
        await pilot.press("down")
        assert table.cursor_row == 1 and table.scroll_x > 0


async def test_table_highlights_the_row_under_the_mouse_until_a_key_moves_the_cursor() -> None:
    app = Host()
    async with app.run_test(size=(80, 20)) as pilot:
        table = app.query_one(LineTable)
        table.show_rows(rows(5))
        await pilot.pause()

        def bg(y: int) -> set[Any]:
            return {s.style.bgcolor for s in table.render_line(y) if s.style and s.text.strip()}

        plain = bg(4)
        await pilot.hover(LineTable, offset=(10, 4))
        assert table.hover_row == 3
        assert bg(4) != plain and bg(4) != bg(1), "hovered: neither a plain nor the cursor row"
        await pilot.press("down")
        assert table.hover_row is None and bg(4) == plain


async def test_the_styles_caches_of_removed_widgets_are_freed() -> None:
    """Textual's ``StylesCache.get_inner_outer`` (an ``lru_cache`` on an instance method) kept the styles cache
    of every widget that drew, with the strips it held, for 1,024 more keys: the footer's keys, made again at
    every rebuild, piled up that way. Given 20 footer rebuilds, then no styles cache outlives its widget."""
    from textual._styles_cache import StylesCache

    async with _footer_rebuilt(StylesCache) as (app, new):
        live = {id(w._styles_cache) for w in [app.screen, *app.screen.walk_children()]}
        stray = [o for o in new if id(o) not in live]
        assert len(stray) <= 2, len(stray)


def test_rich_keeps_a_bounded_number_of_cut_segments() -> None:
    """Rich cached every segment it cut at a cell position, up to 16,384: each new log line with a symbol in it,
    cut at the edge of the view, was one more entry, and the console grew for over an hour. Given 5,000 distinct
    lines cut through a strip, it keeps at most ``SPLIT_CACHE``, and the cuts are Rich's own."""
    from rich.segment import Segment

    Segment._split_cells.cache_clear()
    for i in range(5000):
        strip = Strip([Segment(f"✓ message {i:05d} processed in 2 ms")])
        left, right = strip.divide([8, strip.cell_length])
        assert (left.text, right.text) == ("✓ messag", f"e {i:05d} processed in 2 ms")
    info = Segment._split_cells.cache_info()
    assert info.misses >= 5000
    assert info.currsize == lines.SPLIT_CACHE < 16384
    assert Segment("héllo wörld ✓").split_cells(3) == (Segment("hél"), Segment("lo wörld ✓"))
