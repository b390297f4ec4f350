"""The console's writes: replay, purge, a cron run now, a state edit or delete.

Each is asked for by a tab (a message up), confirmed in a modal, then done by the
:class:`~iii_console.tui.ops.Writer` in a worker thread, off the UI thread; its outcome is
a notification and the visible tab is re-read. A read-only console has no writer: every
one of them then only says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import redis
from textual import work
from textual.app import App

from iii_console.core.dlq import DeadLetter
from iii_console.core.errors import IIIError, StateError
from iii_console.tui import fmt
from iii_console.tui.messages import CronRunChosen, DeadLettersChosen, InspectDeadLetter, StateKeyChosen
from iii_console.tui.ops import Writer
from iii_console.tui.screens import ConfirmScreen, DeadLetterScreen, StateEdit, StateEditScreen

if TYPE_CHECKING:
    import threading

    from iii_console.tui.filter import EventFilter
    from iii_console.tui.source import Snapshot


class WriteFlows(App[None]):
    """The handlers of the tabs' write requests; :class:`~iii_console.tui.app.ConsoleApp` is one."""

    if TYPE_CHECKING:  # set by ConsoleApp
        writer: Writer | None
        read_only: bool
        snap: Snapshot
        filter: EventFilter
        _poke: threading.Event

        def action_read_only(self) -> None: ...

    def on_inspect_dead_letter(self, message: InspectDeadLetter) -> None:
        self.push_screen(DeadLetterScreen(message.entry, read_only=self.read_only))

    def on_dead_letters_chosen(self, message: DeadLettersChosen) -> None:
        if self.writer is None:
            self.action_read_only()
            return
        entries, verb = message.entries, message.action
        if not entries:
            self.notify(
                f"No dead letters to {verb}" + (f" under the filter {self.filter.text}" if self.filter else "") + ".",
                severity="warning",
                markup=False,
            )
            return
        n = len(entries)
        noun = f"{n} dead letter{'s' if n != 1 else ''}"
        question = f"{verb.capitalize()} {noun} from {', '.join(sorted({e.dlq for e in entries}))}?"
        if verb == "replay":
            what = (
                "Each goes back to its queue as a new message with attempts reset and its trace id, "
                "and leaves the dead-letter queue."
            )
        else:
            what = "Deleted for good: a purged entry cannot be replayed."
        detail = f"{message.scope[:1].upper()}{message.scope[1:]}.\n{what}" if message.scope else what
        if n == 1:
            detail += f"\n{entries[0].step or '?'}: {fmt.one_line(entries[0].error, 70)}"

        def confirmed(ok: bool | None) -> None:
            if ok:
                self._write(verb.capitalize(), lambda w: _dlq_write(w, verb, entries))

        self.push_screen(ConfirmScreen(question, detail, confirm=f"{verb.capitalize()} {n}", danger=verb == "purge"), confirmed)

    def on_cron_run_chosen(self, message: CronRunChosen) -> None:
        if self.writer is None:
            self.action_read_only()
            return
        step, expression = message.step, message.expression
        strategy = self.snap.strategies.get(f"_cron.{step}") or self.snap.strategies.get("default") or {}
        priority = str(strategy.get("priority") or "normal")

        def confirmed(ok: bool | None) -> None:
            if ok:
                self._write("Run now", lambda w: f"{step} fired now (message {w.run_cron(step, expression, priority)[:8]})")

        self.push_screen(
            ConfirmScreen(
                f"Run cron step {step} now?",
                f"One tick of {expression}, outside the schedule and marked manual; the schedule's own ticks fire as usual.",
                confirm="Run",
            ),
            confirmed,
        )

    def on_state_key_chosen(self, message: StateKeyChosen) -> None:
        if self.writer is None:
            self.action_read_only()
            return
        group, key = message.group, message.key
        if message.action == "edit":
            writer = self.writer
            self.push_screen(
                StateEditScreen(group, key, message.value, lambda edit: _save_state(writer, edit)), self._state_edited
            )
            return

        def confirmed(ok: bool | None) -> None:
            if ok:
                self._write(
                    "Delete",
                    lambda w: (
                        f"deleted {group}/{key}" if w.delete_state(group, key) is not None else f"{group}/{key} was already gone"
                    ),
                )

        self.push_screen(
            ConfirmScreen(
                f"Delete state {group}/{key}?",
                "A state.changed event is written and state triggers on this key fire.",
                confirm="Delete",
                danger=True,
            ),
            confirmed,
        )

    def _state_edited(self, edit: StateEdit | None) -> None:
        """The editor closes with an edit only once it is stored (a refusal keeps it open)."""
        if edit is not None:
            self.notify(f"{edit.group}/{edit.key} saved", title="Saved", markup=False)
            self._poke.set()

    @work(thread=True, group="write", name="write", exit_on_error=False)
    def _write(self, title: str, do: Callable[[Writer], str]) -> None:
        """One confirmed write, off the UI thread; its outcome is a notification, then the view is re-read."""
        assert self.writer is not None
        try:
            done = do(self.writer)
        except (redis.RedisError, IIIError) as exc:
            self.notify(f"{title} failed: {type(exc).__name__}: {exc}", severity="error", markup=False)
        else:
            self.notify(done, title=title, markup=False)
        finally:
            self._poke.set()


def _save_state(writer: Writer, edit: StateEdit) -> None:
    """Store an edit only if the key still holds what the editor opened with."""
    if not writer.replace_state(edit.group, edit.key, edit.original, edit.value):
        raise StateError(
            f"{edit.group}/{edit.key} changed since the editor opened; nothing was written. "
            "Copy your text, close (esc) and open it again (e) to edit the current value."
        )


def _dlq_write(writer: Writer, verb: str, entries: tuple[DeadLetter, ...]) -> str:
    """Replay or purge, and say how many it touched (entries replayed or purged meanwhile are skipped)."""
    n = len(entries)
    if verb == "purge":
        purged = writer.purge(entries)
        return f"purged {purged} dead letter{'s' if purged != 1 else ''}" + (
            f" ({n - purged} already gone)" if purged < n else ""
        )
    res = writer.replay(entries)
    done = len(res.replayed)
    out = f"replayed {done} dead letter{'s' if done != 1 else ''}"
    if res.skipped:
        out += f"; skipped {len(res.skipped)}: {res.skipped[0]}" + (" …" if len(res.skipped) > 1 else "")
    return out
