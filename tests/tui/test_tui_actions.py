"""The console's writes, driven with Pilot against real Redis and real dead letters:
replay and purge (one entry, or every entry shown under the filter), each confirmed
with the exact count, and state edits that are validated before anything is written.

Dead letters come from real workers running real failing steps; every app comes
from ``create_app``, the factory the CLI calls.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from textual.command import CommandInput, CommandList, CommandPalette
from textual.widgets import Input, Label, OptionList, Static, TextArea

from iii_console.core.dlq import DeadLetter, DeadLetterStore
from iii_console.core.events import Event
from iii_console.core.keys import Keys
from iii_console.core.state import StateStore
from iii_console.tui.screens import ConfirmScreen, DeadLetterScreen, StateEditScreen
from iii_console.tui.widgets import Table

from ..helpers import SIZE, console, events, notes, plain, started, table_rows, until, wait_for

pytestmark = pytest.mark.anyio

FAILS = """
from iii_console import Step, queue
config = Step(name="{name}", triggers=[queue("{topic}")])
def handler(data, ctx):
    ctx.state.update("runs", "{name}", [{{"type": "increment", "path": data["k"]}}])
    raise {exc}("{name} failed on " + data["k"])
"""

CONFIG = """
queues:
  default:
    max_retries: 0
  orders:
    dead_letter_queue: orders.dlq
  emails:
    dead_letter_queue: emails.dlq
"""

WATCH = """
from iii_console import Step, state
config = Step(name="Watch", triggers=[state("settings")])
def handler(change, ctx):
    ctx.state.set("audit", change.key, {"new": change.new})
"""


@pytest.fixture
def dead(project, runtime, producer, r, keys):
    """Five real dead letters: three of ImportOrders (orders.dlq), two of SendEmails (emails.dlq); no worker running."""
    cfg, steps = project(
        {
            "import_step.py": FAILS.format(name="ImportOrders", topic="orders", exc="ValueError"),
            "email_step.py": FAILS.format(name="SendEmails", topic="emails", exc="RuntimeError"),
        },
        CONFIG,
    )
    rt = runtime(cfg, steps)
    p = producer(cfg, steps)
    for k in ("o1", "o2", "o3"):
        p.enqueue("orders", {"k": k}, trace_id=f"trace-{k}")
    for k in ("e1", "e2"):
        p.enqueue("emails", {"k": k}, trace_id=f"trace-{k}")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("orders.dlq") == 3 and store.count("emails.dlq") == 2, what="five dead letters")
    rt.stop(timeout_s=5)  # nothing consumes while the console acts
    return cfg, steps, store


def by_key(store: DeadLetterStore) -> dict[str, DeadLetter]:
    """Entries by the ``k`` of their payload (o1, e2…)."""
    return {e.data["k"]: e for e in store.list()}


def queued(r: redis.Redis, keys: Keys, topic: str, step: str) -> list[dict[str, Any]]:
    """The messages waiting on one step's queue, decoded."""
    q = f"{keys.dramatiq_namespace}:{topic}--{step}--normal"
    ids = r.lrange(q, 0, -1)
    return [json.loads(r.hget(f"{q}.msgs", i)) for i in ids]


def highlight(app: Any, selector: str, key: str) -> None:
    table = app.query_one(selector, Table)
    table.move_cursor(row=list(table_rows(app, selector)).index(key), animate=False)


async def confirm_screen(pilot: Any) -> ConfirmScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
    return app.screen


def question(screen: ConfirmScreen) -> str:
    return plain(screen.query_one("#confirm-question", Label).content)


async def filter_by(pilot: Any, text: str) -> None:
    """Type a filter and keep it (each step waits for what its key does: Pilot's press may return first)."""
    box = pilot.app.query_one("#filter", Input)
    await pilot.press("slash")
    await until(pilot, lambda: box.has_focus, "the filter box to take the keys")
    box.insert_text_at_cursor(text)
    await pilot.press("enter")
    await until(pilot, lambda: not box.display and pilot.app.filter.text == text, "the filter kept")


async def dead_letters_tab(pilot: Any, n: int) -> None:
    await started(pilot)
    await pilot.press("4")
    await until(pilot, lambda: len(table_rows(pilot.app, "#dlq-table")) == n, f"{n} dead letters listed")


async def test_replay_one_puts_exactly_the_highlighted_entry_back_on_its_queue(dead, runtime, r, keys):
    """Given five dead letters, when o2 is highlighted and r confirmed, then only o2 leaves the DLQ, its message waits on its queue with attempts reset and its trace, message.replayed is emitted, and a worker runs it again."""
    cfg, steps, store = dead
    target = by_key(store)["o2"]
    app = console(redis_url=cfg.redis.url, events_maxlen=cfg.events.maxlen)
    async with app.run_test(size=SIZE) as pilot:
        await dead_letters_tab(pilot, 5)
        highlight(app, "#dlq-table", target.id)
        await pilot.press("r")
        screen = await confirm_screen(pilot)
        assert question(screen) == "Replay 1 dead letter from orders.dlq?"
        await pilot.press("enter")
        await until(pilot, lambda: "replayed 1 dead letter" in notes(app), "the result as a notification")
        await until(pilot, lambda: target.id not in table_rows(app, "#dlq-table"), "the view refreshed")
        assert len(table_rows(app, "#dlq-table")) == 4

    assert set(by_key(store)) == {"o1", "o3", "e1", "e2"}
    [msg] = queued(r, keys, "orders", "ImportOrders")
    assert msg["args"] == [{"k": "o2"}] and msg["options"]["replay_of"] == target.id
    assert msg["options"]["trace_id"] == "trace-o2" and "retries" not in msg["options"]
    assert queued(r, keys, "emails", "SendEmails") == []
    [ev] = events(r, keys, "message.replayed")
    assert ev.data["replay_of"] == target.id and ev.trace_id == "trace-o2" and ev.message_id == msg["message_id"]
    assert ev.worker and ev.worker.endswith(":console")
    # A worker takes the replayed message and runs the step again (it still fails: a new entry linked to the old one).
    runtime(cfg, steps)
    wait_for(lambda: store.count("orders.dlq") == 3, what="the replayed message to run")
    assert json.loads(r.hget(keys.state_group("runs"), "ImportOrders")) == {"o1": 1, "o2": 2, "o3": 1}
    again = by_key(store)["o2"]
    assert again.id != target.id and again.message["options"]["replay_of"] == target.id


async def test_replay_shown_moves_exactly_the_filtered_set_and_nothing_else(dead, r, keys):
    """Given a filter showing ImportOrders' three entries, when R is confirmed, then those three (and only those) are back on their queue."""
    cfg, _steps, store = dead
    orders = {e.id for e in store.list("orders.dlq")}
    emails = {e.id for e in store.list("emails.dlq")}
    app = console(redis_url=cfg.redis.url)
    async with app.run_test(size=SIZE) as pilot:
        await dead_letters_tab(pilot, 5)
        await filter_by(pilot, "step:Import")
        await until(pilot, lambda: set(table_rows(app, "#dlq-table")) == orders, "only ImportOrders' entries")
        await pilot.press("R")
        screen = await confirm_screen(pilot)
        assert question(screen) == "Replay 3 dead letters from orders.dlq?"
        assert "under the filter step:Import" in plain(screen.query_one("#confirm-detail", Static).content)
        await pilot.press("enter")
        await until(pilot, lambda: "replayed 3 dead letters" in notes(app), "the result as a notification")
        await until(pilot, lambda: not table_rows(app, "#dlq-table"), "the filtered view emptied")

    assert {e.id for e in store.list()} == emails
    back = queued(r, keys, "orders", "ImportOrders")
    assert {m["options"]["replay_of"] for m in back} == orders
    assert sorted(m["args"][0]["k"] for m in back) == ["o1", "o2", "o3"]
    assert queued(r, keys, "emails", "SendEmails") == []
    assert {e.data["replay_of"] for e in events(r, keys, "message.replayed")} == orders


async def test_purge_states_the_count_cancel_changes_nothing_and_confirm_deletes_exactly_those(dead, r, keys):
    """Given a filter showing SendEmails' two entries, when D is cancelled nothing changes; when D is confirmed those two are deleted; d deletes just the highlighted one."""
    cfg, _steps, store = dead
    entries = by_key(store)
    app = console(redis_url=cfg.redis.url)
    async with app.run_test(size=SIZE) as pilot:
        await dead_letters_tab(pilot, 5)
        await filter_by(pilot, "RuntimeError")
        emails = {entries["e1"].id, entries["e2"].id}
        await until(pilot, lambda: set(table_rows(app, "#dlq-table")) == emails, "only SendEmails' entries")

        for cancel in ("escape", "n"):
            await pilot.press("D")
            screen = await confirm_screen(pilot)
            assert question(screen) == "Purge 2 dead letters from emails.dlq?"
            await pilot.press(cancel)
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the confirmation closed")
        await pilot.pause(0.3)
        assert len(store.list()) == 5 and "purged" not in notes(app)

        await pilot.press("D")
        await confirm_screen(pilot)
        await pilot.press("y")
        await until(pilot, lambda: "purged 2 dead letters" in notes(app), "the result as a notification")
        assert set(by_key(store)) == {"o1", "o2", "o3"}

        await pilot.press("escape")  # clear the filter: the three ImportOrders entries
        await until(pilot, lambda: len(table_rows(app, "#dlq-table")) == 3, "the rest listed")
        highlight(app, "#dlq-table", entries["o3"].id)
        await pilot.press("d")
        screen = await confirm_screen(pilot)
        assert question(screen) == "Purge 1 dead letter from orders.dlq?"
        await pilot.press("enter")
        await until(pilot, lambda: "purged 1 dead letter" in notes(app), "the single purge")
        await until(pilot, lambda: len(table_rows(app, "#dlq-table")) == 2, "the view refreshed")

    assert set(by_key(store)) == {"o1", "o2"}
    assert events(r, keys, "message.replayed") == []
    assert queued(r, keys, "orders", "ImportOrders") == [] and queued(r, keys, "emails", "SendEmails") == []


async def test_inspect_shows_the_whole_entry_and_can_replay_it(dead, r, keys):
    """Given a dead letter, when i is pressed, then its payload, error, traceback, attempts and trace show in full, and r there replays it."""
    cfg, _steps, store = dead
    target = by_key(store)["e1"]
    app = console(redis_url=cfg.redis.url)
    async with app.run_test(size=SIZE) as pilot:
        await dead_letters_tab(pilot, 5)
        highlight(app, "#dlq-table", target.id)
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, DeadLetterScreen), "the entry screen")
        shown = plain(app.screen.query_one("#dlq-entry-detail", Static).content)
        for part in (
            target.id,
            "trace-e1",
            "emails.dlq",
            "SendEmails",
            "attempts 1",
            "RuntimeError: SendEmails failed on e1",
            '"k": "e1"',
            "Traceback (most recent call last)",
            'raise RuntimeError("SendEmails failed on "',
        ):
            assert part in shown, part
        await pilot.press("r")
        screen = await confirm_screen(pilot)
        assert question(screen) == "Replay 1 dead letter from emails.dlq?"
        await pilot.press("enter")
        await until(pilot, lambda: "replayed 1 dead letter" in notes(app), "the replay")
        assert not isinstance(app.screen, DeadLetterScreen)

    assert target.id not in {e.id for e in store.list()} and len(store.list()) == 4
    [msg] = queued(r, keys, "emails", "SendEmails")
    assert msg["options"]["replay_of"] == target.id


async def test_state_edit_refuses_invalid_json_and_saves_valid_json_as_an_ordinary_change(project, runtime, r, keys):
    """Given a state key, when its edit has a JSON error, then the editor stays open naming line and column and nothing is written; when valid, then it is written, state.changed is emitted and the state trigger fires; d deletes after confirming."""
    from iii_console.runtime.worker import ensure_trigger_group

    cfg, steps = project({"watch_step.py": WATCH})
    ensure_trigger_group(r, keys.state_changes)
    runtime(cfg, steps)
    store = StateStore(r, keys)
    store.set("settings", "mode", {"dark": True})
    wait_for(lambda: store.get("audit", "mode") == {"new": {"dark": True}}, what="the seed's trigger")

    def changes() -> list[Event]:
        return [e for e in events(r, keys, "state.changed") if e.data["group"] == "settings"]

    app = console(redis_url=cfg.redis.url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("5")
        groups = app.query_one("#state-groups", OptionList)
        await until(pilot, lambda: groups.option_count == 2, "the groups listed")  # audit, settings
        groups.highlighted = 1
        keys_table = app.query_one("#state-keys", Table)
        await until(
            pilot,
            lambda: str(keys_table.border_title).startswith("Keys in settings") and "mode" in table_rows(app, "#state-keys"),
            "the group's key listed",
        )
        highlight(app, "#state-keys", "mode")

        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, StateEditScreen), "the editor")
        editor = app.screen.query_one("#state-editor", TextArea)
        assert json.loads(editor.text) == {"dark": True} and editor.text == '{\n  "dark": true\n}'
        editor.load_text('{\n  "dark": false,\n  "size": \n}')
        form = app.screen
        await pilot.press("ctrl+s")
        shown = form.query_one("#edit-error", Static)
        await until(pilot, lambda: plain(shown.content), "the reason the JSON is refused")
        assert app.screen is form
        error = plain(shown.content)
        assert error.startswith("Not valid JSON: line 4, column 1:"), error
        assert editor.cursor_location == (3, 0)
        assert store.get("settings", "mode") == {"dark": True} and len(changes()) == 1

        editor.load_text('{"dark": false, "size": 14}')
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, StateEditScreen), "the editor closed")
        await until(pilot, lambda: "settings/mode saved" in notes(app), "the save as a notification")
        assert store.get("settings", "mode") == {"dark": False, "size": 14}
        last = wait_for(lambda: changes()[1:], what="a state.changed event")[-1]
        assert last.step == "console" and last.data["old"] == {"dark": True} and last.data["new"] == {"dark": False, "size": 14}
        wait_for(lambda: store.get("audit", "mode") == {"new": {"dark": False, "size": 14}}, what="the trigger fired by the edit")

        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, StateEditScreen), "the editor again")
        app.screen.query_one("#state-editor", TextArea).load_text('{"dark": "never"}')
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, StateEditScreen), "the editor cancelled")

        await pilot.press("d")
        screen = await confirm_screen(pilot)
        assert question(screen) == "Delete state settings/mode?"
        await pilot.press("enter")
        await until(pilot, lambda: "deleted settings/mode" in notes(app), "the delete")

    assert store.get("settings", "mode") is None
    assert [e.data["op"] for e in changes()] == ["set", "set", "delete"]


async def test_a_state_edit_is_refused_when_the_value_changed_while_the_editor_was_open(project, r, keys):
    """Given the editor open on a key, when a step changes that key before the save, then the save writes nothing and says why."""
    cfg, _steps = project({})
    store = StateStore(r, keys)
    store.set("settings", "mode", {"dark": True})
    app = console(redis_url=cfg.redis.url)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("5")
        keys_table = app.query_one("#state-keys", Table)
        await until(pilot, lambda: "mode" in table_rows(app, "#state-keys"), "the key listed")
        highlight(app, "#state-keys", "mode")
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, StateEditScreen), "the editor")
        store.set("settings", "mode", {"dark": True, "by": "a step"})  # someone else's change, meanwhile
        app.screen.query_one("#state-editor", TextArea).load_text('{"dark": false}')
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "changed since the editor opened" in notes(app), "the refusal")
        assert "Save failed: " in notes(app) and "Saved failed" not in notes(app)
        # The editor stays open with the text as typed, and says why in it.
        assert isinstance(app.screen, StateEditScreen)
        assert app.screen.query_one("#state-editor", TextArea).text == '{"dark": false}'
        assert plain(app.screen.query_one("#edit-error", Static).content).startswith("Save failed: ")
        assert keys_table is not None
    assert store.get("settings", "mode") == {"dark": True, "by": "a step"}


async def test_the_palette_offers_the_visible_tabs_writes_and_cancelling_changes_nothing(dead, r, keys):
    """Given the Dead letters tab, when the palette's replay command is chosen and then cancelled, then the confirmation named all five entries and both queues, and nothing moved."""
    cfg, _steps, store = dead
    before = {e.id for e in store.list()}
    app = console(redis_url=cfg.redis.url)
    async with app.run_test(size=SIZE) as pilot:
        await dead_letters_tab(pilot, 5)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the command palette")
        app.screen.query_one(CommandInput).insert_text_at_cursor("replay dead letters shown")
        await until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, "the replay command")
        await pilot.press("enter")
        screen = await confirm_screen(pilot)
        assert question(screen) == "Replay 5 dead letters from emails.dlq, orders.dlq?"
        await pilot.click("#confirm-cancel")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the confirmation closed")
        await pilot.pause(0.3)
    assert {e.id for e in store.list()} == before
    assert events(r, keys, "message.replayed") == [] and queued(r, keys, "orders", "ImportOrders") == []


TICK = """
from iii_console import Step, cron
config = Step(name="Cleanup", triggers=[cron("0 3 * * *")])
def handler(tick, ctx):
    ctx.state.set("ticks", ctx.message_id, {"manual": tick.manual})
"""


async def test_r_on_cron_runs_the_highlighted_step_now_marked_manual(project, runtime, r, keys):
    """Given a cron step published by a running project, when r is pressed on Cron and confirmed, then one manual
    tick is enqueued (message.enqueued and cron.fired marked manual) and a worker runs it; cancelling runs nothing."""
    cfg, steps = project({"cleanup_step.py": TICK})
    r.hset(keys.steps_registry, mapping={s.name: json.dumps(s.describe()) for s in steps.steps})
    app = console(redis_url=cfg.redis.url, events_maxlen=cfg.events.maxlen)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("6")
        await until(pilot, lambda: "Cleanup|0 3 * * *" in table_rows(app, "#cron-table"), "the cron step listed")
        await pilot.press("r")
        screen = await confirm_screen(pilot)
        assert question(screen) == "Run cron step Cleanup now?"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the dialog closed")
        assert events(r, keys, "cron.fired") == []
        await pilot.press("r")
        await confirm_screen(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: "Cleanup fired now" in notes(app), "the result as a notification")
    [fired] = events(r, keys, "cron.fired")
    assert fired.data["manual"] is True and fired.worker.endswith(":console")
    runtime(cfg, steps)
    wait_for(lambda: r.hget(keys.state_group("ticks"), fired.message_id), what="the tick ran")
    assert json.loads(r.hget(keys.state_group("ticks"), fired.message_id)) == {"manual": True}


async def test_a_read_only_console_runs_no_cron_step(project, r, keys):
    cfg, steps = project({"cleanup_step.py": TICK})
    r.hset(keys.steps_registry, mapping={s.name: json.dumps(s.describe()) for s in steps.steps})
    app = console(redis_url=cfg.redis.url, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot)
        await pilot.press("6")
        await until(pilot, lambda: "Cleanup|0 3 * * *" in table_rows(app, "#cron-table"), "the cron step listed")
        await pilot.press("r")
        await until(pilot, lambda: "read-only" in notes(app), "the read-only note")
        assert not isinstance(app.screen, ConfirmScreen)
    assert events(r, keys, "cron.fired") == [] and events(r, keys, "message.enqueued") == []
