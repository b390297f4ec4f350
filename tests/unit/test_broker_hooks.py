"""The broker's middleware signals (``HookCache``) and its message proxy (``Delivery``)."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage

from iii_console.adapters.queue.broker import Delivery
from iii_console.adapters.queue.middleware import HookCache


class Broker(HookCache, StubBroker):
    pass


class Recorder(dramatiq.Middleware):
    def __init__(self, name: str, calls: list[str], *, fail: BaseException | None = None):
        self.name, self.calls, self.fail = name, calls, fail

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.before")
        if self.fail is not None:
            raise self.fail

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        self.calls.append(f"{self.name}.after:{result}")


class Quiet(dramatiq.Middleware):
    """Defines no hook: never called."""


def test_signals_reach_the_hooks_in_dramatiqs_order() -> None:
    calls: list[str] = []
    broker = Broker(middleware=[Recorder("a", calls), Quiet(), Recorder("b", calls)])
    broker.emit_before("process_message", None)
    broker.emit_after("process_message", None, result=7)
    broker.emit_before("ack", None)  # nobody's hook
    assert calls == ["a.before", "b.before", "b.after:7", "a.after:7"]


def test_a_middleware_added_later_is_called() -> None:
    calls: list[str] = []
    broker = Broker(middleware=[Recorder("a", calls)])
    broker.emit_before("process_message", None)
    broker.add_middleware(Recorder("b", calls))
    broker.emit_before("process_message", None)
    assert calls == ["a.before", "a.before", "b.before"]


def test_a_failing_hook_is_logged_and_the_next_runs_but_skip_message_propagates(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    broker = Broker(middleware=[Recorder("a", calls, fail=RuntimeError("boom")), Recorder("b", calls)])
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("process_message", None)
    assert calls == ["a.before", "b.before"]
    assert "Unexpected failure in before_process_message" in caplog.text

    calls.clear()
    skipping = Broker(middleware=[Recorder("a", calls, fail=SkipMessage()), Recorder("b", calls)])
    with pytest.raises(SkipMessage):
        skipping.emit_before("process_message", None)
    assert calls == ["a.before"]


def test_delivery_reads_the_message_fields_and_keeps_its_own() -> None:
    message = Message(queue_name="q", actor_name="act", args=(1,), kwargs={"k": 2}, options={"topic": "t"})
    d = Delivery(message)
    assert (d.queue_name, d.actor_name, d.args, d.kwargs, d.options, d.message_id, d.message_timestamp) == (
        "q",
        "act",
        (1,),
        {"k": 2},
        {"topic": "t"},
        message.message_id,
        message.message_timestamp,
    )
    d.options["retries"] = 1  # the message's own dict: what the settle writes back
    assert message.options["retries"] == 1
    assert d.asdict() == message.asdict()  # anything else still reaches the message
    assert d == message and not d.failed
