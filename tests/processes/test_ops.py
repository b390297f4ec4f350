"""Operator commands against real Redis and real workers: dead-letter list, show,
replay and purge with filters; state tools; steps; config check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from iii_console.core.dlq import DeadLetterStore
from iii_console.core.state import StateStore

from ..helpers import cli_in_process, events, make_project, wait_for

FAILS = """
from iii_console import Step, queue
config = Step(name="{name}", triggers=[queue("{topic}")])
def handler(data, ctx):
    ctx.state.update("runs", "{name}", [{{"type": "increment", "path": data["k"]}}])
    if data.get("fail"):
        raise {exc}("{name} failed on " + data["k"])
"""

CONFIG = """
queues:
  default:
    max_retries: 0
  alpha:
    dead_letter_queue: alpha.dlq
  beta:
    dead_letter_queue: beta.dlq
"""


@pytest.fixture
def dead(project, runtime, producer, r, keys):
    """Five dead letters: 3 from step A (topic alpha: two ValueError, one KeyError), 2 from step B (topic beta)."""
    cfg, steps = project(
        {
            "a_step.py": FAILS.format(name="A", topic="alpha", exc="ValueError"),
            "b_step.py": FAILS.format(name="B", topic="beta", exc="RuntimeError"),
        },
        CONFIG,
    )
    rt = runtime(cfg, steps)
    p = producer(cfg, steps)
    for k in ("a1", "a2"):
        p.enqueue("alpha", {"k": k, "fail": True}, trace_id=f"trace-{k}")
    for k in ("b1", "b2"):
        p.enqueue("beta", {"k": k, "fail": True}, trace_id=f"trace-{k}")
    store = DeadLetterStore(r, keys)
    wait_for(lambda: store.count("alpha.dlq") == 2 and store.count("beta.dlq") == 2, what="four dead letters")
    rt.stop(timeout_s=5)  # nothing consumes while we look
    return cfg, steps, store


def test_list_filters_by_queue_step_error_and_since(dead):
    cfg, _steps, _store = dead
    rows = lambda *a: [json.loads(line) for line in cli_in_process(cfg, "dlq", "list", "--json", *a).stdout.splitlines()]  # noqa: E731
    assert len(rows()) == 4
    assert {r["step"] for r in rows("--queue", "alpha.dlq")} == {"A"}
    assert {r["step"] for r in rows("--queue", "beta")} == {"B"}  # a topic works too
    assert {r["step"] for r in rows("--step", "B")} == {"B"} and len(rows("--step", "B")) == 2
    assert [r["error"] for r in rows("--error", "failed on a2")] == ["ValueError: A failed on a2"]
    assert len(rows("--since", "1h")) == 4 and rows("--since", "2999-01-01T00:00:00") == []
    bad = cli_in_process(cfg, "dlq", "list", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_show_prints_payload_error_traceback_attempts_and_trace(dead):
    cfg, _steps, store = dead
    entry = next(e for e in store.list() if e.data["k"] == "b1")
    out = json.loads(cli_in_process(cfg, "dlq", "show", entry.id, "--json").stdout)
    assert out["data"] == {"k": "b1", "fail": True} and out["attempts"] == 1 and out["trace_id"] == "trace-b1"
    assert out["error"] == "RuntimeError: B failed on b1" and "raise RuntimeError" in out["traceback"]
    assert out["first_failure_ms"] <= out["last_failure_ms"]
    human = cli_in_process(cfg, "dlq", "show", entry.id).stdout
    assert "trace-b1" in human and "Traceback" in human
    assert cli_in_process(cfg, "dlq", "show", "nope").returncode == 2


def test_replay_moves_exactly_the_filtered_set_and_nothing_else(dead, runtime, r, keys):
    cfg, steps, store = dead
    before = {e.id for e in store.list()}
    a_ids = {e.id for e in store.list() if e.step == "A"}
    dry = cli_in_process(cfg, "dlq", "replay", "--all", "--step", "A", "--dry-run")
    assert dry.returncode == 0 and "2 would be replayed" in dry.stderr and store.count("alpha.dlq") == 2
    res = cli_in_process(cfg, "dlq", "replay", "--all", "--step", "A", "--yes", "--json")
    assert res.returncode == 0, res.stderr
    replayed = [json.loads(line) for line in res.stdout.splitlines()]
    assert {x["replayed"] for x in replayed} == a_ids
    assert {e.id for e in store.list()} == before - a_ids  # B's entries untouched
    evs = events(r, keys, "message.replayed")
    assert {e.data["replay_of"] for e in evs} == a_ids and {e.trace_id for e in evs} == {"trace-a1", "trace-a2"}
    # The replayed messages run again (and, still failing, come back as new entries linked to the originals).
    runtime(cfg, steps)
    wait_for(lambda: store.count("alpha.dlq") == 2, what="replayed messages processed")
    again = [e for e in store.list("alpha.dlq")]
    assert {e.message["options"]["replay_of"] for e in again} == a_ids and not ({e.id for e in again} & a_ids)
    assert json.loads(r.hget(keys.state_group("runs"), "A")) == {"a1": 2, "a2": 2}


def test_replay_by_id_and_a_second_replay_of_the_same_entry_is_refused(dead):
    cfg, _steps, store = dead
    entry = store.list("beta.dlq")[0]
    assert cli_in_process(cfg, "dlq", "replay", entry.id, "--yes").returncode == 0
    second = cli_in_process(cfg, "dlq", "replay", entry.id, "--yes")
    assert second.returncode == 2 and "no dead letter" in second.stderr
    assert store.count("beta.dlq") == 1


def test_bulk_action_states_the_count_and_needs_confirmation(dead):
    cfg, _steps, store = dead
    declined = cli_in_process(cfg, "dlq", "purge", "--all")  # no terminal, no --yes
    assert declined.returncode == 2 and "4 entries" in declined.stderr and store.count("alpha.dlq") == 2


def test_purge_removes_exactly_the_filtered_set(dead):
    cfg, _steps, store = dead
    res = cli_in_process(cfg, "dlq", "purge", "--all", "--error", "RuntimeError", "--yes")
    assert res.returncode == 0 and "purged 2" in res.stderr
    assert store.count("beta.dlq") == 0 and store.count("alpha.dlq") == 2


WATCH = """
from iii_console import Step, state
config = Step(name="Watch", triggers=[state("settings")])
def handler(change, ctx):
    ctx.state.set("audit", change.key, {"new": change.new})
"""


def test_state_commands_read_edit_and_fire_triggers(project, runtime, r, keys):
    cfg, steps = project({"watch_step.py": WATCH})
    from iii_console.runtime.worker import ensure_trigger_group

    ensure_trigger_group(r, keys.state_changes)
    runtime(cfg, steps)
    assert cli_in_process(cfg, "state", "set", "settings", "mode", '{"dark": true}').returncode == 0
    assert json.loads(cli_in_process(cfg, "state", "get", "settings", "mode", "--json").stdout) == {"dark": True}
    assert json.loads(cli_in_process(cfg, "state", "list", "settings", "--json").stdout) == {"mode": {"dark": True}}
    wait_for(lambda: StateStore(r, keys).get("audit", "mode") == {"new": {"dark": True}}, what="trigger fired by the CLI edit")
    assert "settings" in json.loads(cli_in_process(cfg, "state", "groups", "--json").stdout)
    bad = cli_in_process(cfg, "state", "set", "settings", "mode", "{oops")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    assert StateStore(r, keys).get("settings", "mode") == {"dark": True}
    assert cli_in_process(cfg, "state", "delete", "settings", "mode").returncode == 0
    assert cli_in_process(cfg, "state", "get", "settings", "mode").returncode == 2
    changed = [e for e in events(r, keys, "state.changed") if e.data["group"] == "settings"]
    assert [e.step for e in changed] == ["cli", "cli"]


def test_steps_and_config_check_report_problems_with_file_line_and_field(tmp_path):
    cfg = make_project(
        tmp_path,
        {
            "ok_step.py": "from iii_console import Step, queue\nconfig = Step(name='Ok', triggers=[queue('t')], enqueues=['nowhere'])\ndef handler(d, ctx): pass\n",
            "bad_step.py": "config = {'name': 'Bad', 'triggers': [{'type': 'cron', 'cron': '* * *'}]}\ndef handler(ctx): pass\n",
            "tick_step.py": "from iii_console import Step, cron\nconfig = Step(name='Tick', triggers=[cron('* * * * *')])\ndef handler(ctx): pass\n",
        },
        "queues:\n  ghost:\n    max_retries: 1\n  _cron.Tick:\n    concurrency: 1\n  _cron.Gone:\n    concurrency: 1\n",
    )

    def run(*a):
        return subprocess.run([sys.executable, "-m", "iii_console", *a], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    res = run("config", "check")
    assert res.returncode == 2
    lines = res.stdout.splitlines()
    assert any("bad_step.py" in x and "'Bad'" in x and "triggers.0.cron" in x and "3 fields" in x for x in lines), lines
    assert any("ok_step.py" in x and "'enqueues'" in x and "nowhere" in x for x in lines), lines
    assert any("queues.ghost" in x for x in lines), lines
    assert any("queues._cron.Gone" in x for x in lines) and not any("_cron.Tick" in x for x in lines), lines
    listed = json.loads(run("steps", "--json").stdout)
    assert [s["name"] for s in listed["steps"]] == ["Ok", "Tick"] and len(listed["errors"]) == 1
    (tmp_path / "iii-config.yaml").write_text("queues:\n  t:\n    retry_delay: -5\n")
    res = run("config", "check")
    assert res.returncode == 2 and "iii-config.yaml:3: queues.t.retry_delay" in res.stdout
    assert cfg.steps_path.exists()


def test_replay_of_a_step_the_deployment_no_longer_runs_is_refused_and_the_entry_stays(dead, r, keys, tmp_path):
    """Given dead letters of step A and a deployment that has since renamed A to A2 (its published steps), when they
    are replayed, then each of A's is skipped naming why (nothing would run it) and stays in its dead-letter queue, the
    command exits 1 and A's queue gets nothing; B's, still run, is replayed. `--dry-run` says the same."""
    from iii_console.core.discovery import discover

    cfg, _steps, store = dead
    renamed = tmp_path / "v2"
    make_project(
        renamed,
        {
            "a_step.py": FAILS.format(name="A2", topic="alpha", exc="ValueError"),
            "b_step.py": FAILS.format(name="B", topic="beta", exc="RuntimeError"),
        },
    )
    v2 = discover(renamed / "steps")
    r.delete(keys.steps_registry)
    for s in v2.steps:  # what the new version's supervisor publishes
        r.hset(keys.steps_registry, s.name, json.dumps(s.describe()))
    a_ids = {e.id for e in store.list("alpha.dlq")}
    dry = cli_in_process(cfg, "dlq", "replay", "--all", "--dry-run")
    assert dry.returncode == 0 and dry.stderr.count("would skip") == 2 and "2 would be replayed" in dry.stderr, dry.stderr
    res = cli_in_process(cfg, "dlq", "replay", "--all", "--yes", "--json")
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("step 'A' is not among the deployment's steps") == 2 and "replayed 2 of 4" in res.stderr
    assert {e.id for e in store.list("alpha.dlq")} == a_ids and store.count("beta.dlq") == 0
    assert not [k for k in r.scan_iter(f"{keys.dramatiq_namespace}:alpha--A--*") if r.type(k) == b"list" and r.llen(k)]
