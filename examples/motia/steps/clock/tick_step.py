"""A Motia cron step in the 7-field form (seconds first, year last), with a condition that
pauses it while the state key clock/paused is true. A one-argument handler gets None."""

from motia import FlowContext, cron, stateManager


def running(input: None, ctx: FlowContext) -> bool:
    return not stateManager.get("clock", "paused")


config = {"name": "Tick", "triggers": [cron("*/2 * * * * * *", condition=running)], "flows": ["clock"]}


def handler(input: None) -> None:
    assert input is None
    stateManager.update("clock", "ticks", [{"type": "increment", "path": "n", "by": 1}])
