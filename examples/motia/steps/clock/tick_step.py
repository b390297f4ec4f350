"""A Motia cron step in the 7-field form (seconds first, year last): input is None."""

from motia import cron, stateManager

config = {"name": "Tick", "triggers": [cron("*/2 * * * * * *")], "flows": ["clock"]}


def handler(input: None) -> None:
    assert input is None
    stateManager.update("clock", "ticks", [{"type": "increment", "path": "n", "by": 1}])
