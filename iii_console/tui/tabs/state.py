"""State: groups, keys and JSON values, refreshed as state.changed events arrive."""

from __future__ import annotations

from typing import Any

from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option

from iii_console.tui import fmt
from iii_console.tui.messages import StateGroupChosen, StateKeyChosen
from iii_console.tui.widgets import Pane, Table, View, cursor_key, retitle, t

MAX_KEYS = 1000


def summary(value: Any) -> str:
    """A few telling fields of a JSON object (status first), else the value itself."""
    if isinstance(value, dict):
        keys = [k for k in ("status", "state", "text", "name", "priority", "attempts") if k in value]
        if keys:
            return " ".join(f"{k}={fmt.one_line(value[k], 30)}" for k in keys[:4])
    return fmt.one_line(value, 70)


#: State groups that hold Motia streams (``core/motia``): ``_stream.todo`` is the stream ``todo``.
STREAM_PREFIX = "_stream."


def group_label(group: str, count: int) -> Text:
    """A group as the Groups list shows it; a Motia stream as ``stream NAME``."""
    if group.startswith(STREAM_PREFIX):
        return Text.assemble(("stream ", "magenta"), (group[len(STREAM_PREFIX) :], "bold"), f"  {count}")
    return Text.assemble((group, "bold"), f"  {count}")


class StatePane(Pane):
    wants = frozenset({"state"})
    writes = frozenset({"edit", "delete"})
    BINDINGS = [
        Binding("e", "edit", "Edit"),
        Binding("d", "delete", "Delete"),
        Binding("e,d", "app.read_only", show=False),  # what those keys do on a read-only console
    ]

    DEFAULT_CSS = """
    StatePane { layout: horizontal; }
    StatePane #state-groups { width: 28; height: 1fr; border: round $panel-lighten-2; }
    StatePane #state-keys { width: 3fr; height: 1fr; }
    StatePane #state-value-box { width: 2fr; border: round $panel-lighten-2; }
    StatePane #state-groups:focus { border: round $accent; }
    StatePane #state-value { padding: 0 1; }
    """

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._groups: list[str] = []
        self._counts: dict[str, int] = {}
        self._group: str | None = None
        self._values: dict[str, Any] = {}
        self._shown: tuple[str | None, str] | None = None

    def compose(self) -> ComposeResult:
        groups = OptionList(id="state-groups")
        retitle(groups, title="Groups")
        yield groups
        yield Table((("Key", 34), ("Changed", 8), ("Value", None)), title="Keys", id="state-keys")
        with VerticalScroll(id="state-value-box") as box:
            retitle(box, title="Value")
            yield Static("", id="state-value")

    def show(self, view: View) -> None:
        snap = view.snap
        table = self.query_one("#state-keys", Table)
        if "state" not in snap.loaded:
            retitle(table, subtitle="loading…")
            return
        names = sorted(snap.state_groups)
        opts = self.query_one("#state-groups", OptionList)
        if names != self._groups:
            self._groups = names
            highlighted = opts.highlighted
            opts.clear_options()
            opts.add_options([Option(group_label(g, snap.state_groups[g]), id=g) for g in names])
            if names:
                want = snap.state_group if snap.state_group in names else names[0]
                opts.highlighted = names.index(want) if highlighted is None else min(highlighted, len(names) - 1)
        else:
            for i, g in enumerate(names):
                if snap.state_groups[g] != self._counts.get(g):
                    opts.replace_option_prompt_at_index(i, group_label(g, snap.state_groups[g]))
        self._counts = dict(snap.state_groups)
        self._group = snap.state_group
        self._values = snap.state_values
        recent = view.model.state_recent(self._group) if self._group else {}
        keys = sorted(self._values, key=lambda k: (-recent.get(k, 0), k))[:MAX_KEYS]
        table.show_rows(
            [
                (
                    k,
                    (
                        t(k, "bold"),
                        t(
                            fmt.ago(recent.get(k), view.now_ms) if k in recent else "-",
                            "yellow" if k in recent else "bright_black",
                            justify="right",
                        ),
                        t(summary(self._values[k])),
                    ),
                )
                for k in keys
            ]
        )
        total = snap.state_groups.get(self._group or "", len(self._values))
        count = f"{len(keys):,} of {total:,}" if len(keys) < total else f"{total:,}"
        retitle(table, title=f"Keys in {self._group} ({count})" if self._group else "Keys (no state yet)")
        retitle(table, subtitle="recently changed first" if recent else "")
        self._value(cursor_key(table), force=False)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        group = event.option.id
        if group and group != self._group:
            self.post_message(StateGroupChosen(group))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._value(event.row_key.value, force=True)

    def _value(self, key: str | None, *, force: bool) -> None:
        value = self._values.get(key or "")
        text = fmt.pretty_json(value) if key in self._values else ""
        shown = (key, text)
        if shown == self._shown and not force:
            return
        self._shown = shown
        box = self.query_one("#state-value-box", VerticalScroll)
        retitle(box, title=f"{self._group}/{key}" if key else "Value")
        widget = self.query_one("#state-value", Static)
        if not text:
            widget.update(Text("Select a key to see its value.", style="bright_black"))
        else:
            widget.update(Syntax(text, "json", theme="ansi_dark", word_wrap=True, background_color="default"))

    def _chosen(self, action: str) -> None:
        key = cursor_key(self.query_one("#state-keys", Table))
        if self._group is None or key is None or key not in self._values:
            self.notify("No state key is highlighted.", severity="warning")
            return
        self.post_message(StateKeyChosen(action, self._group, key, self._values[key]))

    def action_edit(self) -> None:
        self._chosen("edit")

    def action_delete(self) -> None:
        self._chosen("delete")
