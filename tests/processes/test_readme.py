"""What the README and the CLI's help tell a new user to paste works as pasted."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from iii_console.cli import cli
from iii_console.core.discovery import discover
from iii_console.core.events import EVENT_TYPES
from iii_console.core.steps import QueueTrigger, validate_input

from ..helpers import ROOT


def _python_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_the_writing_steps_example_pasted_as_two_files_passes_config_check_without_a_warning(tmp_path: Path) -> None:
    first, second = _python_blocks("Writing steps")[:2]
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "import_order_step.py").write_text(first)
    (tmp_path / "steps" / "announce_order_step.py").write_text(second)
    (tmp_path / "iii-config.yaml").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "iii_console", "config", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in done.stdout + done.stderr


def test_send_helps_example_data_is_valid_input_for_the_seed_step_it_names() -> None:
    helptext = CliRunner().invoke(cli, ["send", "--help"]).output
    line = next(ln for ln in helptext.splitlines() if "--topic" in ln and "--data" in ln and "iii-console send" in ln)
    args = shlex.split(line.split("iii-console", 1)[1])
    topic, data = args[args.index("--topic") + 1], args[args.index("--data") + 1]
    steps = discover(ROOT / "steps").steps
    schemas = [t.input_schema for s in steps for t in s.of(QueueTrigger) if t.topic == topic]
    assert schemas, f"no seed step subscribes to {topic}"
    import json

    for schema in schemas:
        validate_input(schema, json.loads(data))  # raises (the message would be dead-lettered) if it does not fit


def test_the_events_table_lists_exactly_the_event_types_the_code_has() -> None:
    """Given README's event table, when its type column is read, then it names each type of core/events.py once, and no other."""
    text = (ROOT / "README.md").read_text()
    table = text.split("\n## Events\n", 1)[1].split("\n\n| type |", 1)[1].split("\n\n", 1)[0]
    names: list[str] = []
    for row in table.splitlines()[2:]:
        names += re.findall(r"`([a-z_.]+)`", row.split("|")[1])
    assert sorted(names) == sorted(EVENT_TYPES)
    assert len(names) == len(set(names))
