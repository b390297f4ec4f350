"""Attach read-only with a Redis user whose ACL allows only reads: the console
shows everything, offers no action that writes (send, replay, purge, state edits)
and attempts no write at all (Redis's ACL LOG stays empty)."""

from __future__ import annotations

import time

import pytest

from iii_console.core.dlq import DeadLetter, DeadLetterStore
from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer
from iii_console.core.state import StateStore
from iii_console.tui import create_app
from iii_console.tui.lines import LineLog
from iii_console.tui.messages import DeadLettersChosen, StateKeyChosen
from iii_console.tui.screens import ConfirmScreen, DeadLetterScreen, StateEditScreen

from ..helpers import lifecycle, log_text, started, until, xadd

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def acl_server(tmp_path):
    server = RedisServer(
        tmp_path / "acl",
        appendonly=False,
        extra=[
            "--user",
            "admin",
            "on",
            ">admin-pass",
            "~*",
            "&*",
            "+@all",
            "--user",
            "viewer",
            "on",
            ">view-pass",
            "~*",
            "&*",
            "+@read",
            "+@connection",
            "-@write",
            "+time",
            "+info",
            "--user",
            "default",
            "off",
        ],
    ).start()
    yield server
    server.kill()


async def test_read_only_attach_with_a_read_only_user_views_everything_and_writes_nothing(acl_server):
    """Given a viewer-only ACL user, when every tab is opened and every writing key pressed (and writes requested
    directly), then the footer and palette offer none of them, each is refused with a notice, and Redis saw no write."""
    import redis

    keys = Keys()
    admin = redis.Redis(port=acl_server.port, username="admin", password="admin-pass")
    now = int(time.time() * 1000)
    xadd(admin, keys, lifecycle(1, now - 5000) + lifecycle(2, now - 4000, fails=1))
    StateStore(admin, keys).set("messages", "m1", {"status": "processed"})
    entry = DeadLetter(
        id="dead-1",
        dlq="message.sent.dlq",
        error="RuntimeError: boom",
        topic="message.sent",
        step="ProcessMessage",
        attempts=3,
        first_failure_ms=now,
        last_failure_ms=now,
        trace_id="t",
    )
    admin.hset(keys.dlq_entries(entry.dlq), entry.id, entry.encode())
    admin.zadd(keys.dlq(entry.dlq), {entry.id: now})
    admin.sadd(keys.dlq_names, entry.dlq)
    admin.execute_command("ACL", "LOG", "RESET")
    # The viewer really cannot write.
    viewer = redis.Redis(port=acl_server.port, username="viewer", password="view-pass")
    with pytest.raises(redis.exceptions.NoPermissionError):
        viewer.set("x", "1")
    admin.execute_command("ACL", "LOG", "RESET")

    app = create_app(redis_url=f"redis://viewer:view-pass@127.0.0.1:{acl_server.port}/0", read_only=True)
    app.NOTIFICATION_TIMEOUT = 120  # every refusal stays countable
    async with app.run_test(size=(160, 45)) as pilot:
        await started(pilot)
        await until(pilot, lambda: "message.processed" in log_text(app.query_one("#events", LineLog)), "events on screen")
        for key in "12345678":  # every view, each of which reads Redis
            await pilot.press(key)
            await pilot.pause(0.3)
        assert app.writer is None

        def shown() -> set[str]:
            """What the footer offers, and what the command palette offers."""
            footer = {b.binding.description for b in app.screen.active_bindings.values() if b.binding.show}
            return footer | {c.title for c in app.get_system_commands(app.screen)}

        writes = {
            "Send",
            "Replay",
            "Replay shown",
            "Purge",
            "Purge shown",
            "Edit",
            "Delete",
            "Send test message",
            "Replay dead letters shown",
            "Purge dead letters shown",
            "Edit state value",
        }
        await pilot.press("4")
        await until(pilot, lambda: app.query_one("#dlq-table").row_count == 1, "the dead letter listed")
        assert "Inspect" in shown() and not shown() & writes
        await pilot.press("i")  # reading an entry in full is fine
        await until(pilot, lambda: isinstance(app.screen, DeadLetterScreen), "the entry screen")
        assert "Trace" in shown() and not shown() & writes
        await pilot.press("r", "d", "escape")
        for key in ("r", "R", "d", "D"):  # each writing key only says why it is off
            await pilot.press(key)
        await pilot.press("5")
        await until(pilot, lambda: app.query_one("#state-keys").row_count == 1, "the state key listed")
        assert not shown() & writes
        await pilot.press("e", "d", "s")
        # Invoked some other way, the writes are refused too.
        app.post_message(DeadLettersChosen("purge", (entry,)))
        app.post_message(StateKeyChosen("edit", "messages", "m1", {"status": "processed"}))

        def refusals() -> list[object]:
            return [n for n in app._notifications if "read-only" in n.message]

        await until(pilot, lambda: len(refusals()) >= 11, "every writing key and message refused")
        assert len(refusals()) == 11, [n.message for n in app._notifications]  # 9 keys, 2 messages: each refused once
        assert not isinstance(app.screen, (ConfirmScreen, StateEditScreen, DeadLetterScreen))
        await pilot.press("q")
    denied = admin.execute_command("ACL", "LOG")
    assert denied == [], denied
    assert [e.id for e in DeadLetterStore(admin, keys).list()] == ["dead-1"]
    assert StateStore(admin, keys).get("messages", "m1") == {"status": "processed"}
