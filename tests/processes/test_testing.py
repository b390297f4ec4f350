"""iii_console.testing, the pytest plugin for users' steps, run as a user runs it: pytest in
a project of its own, in a subprocess, against the plugin's private redis-server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.slow

STEPS = {
    "charge_step.py": """
        from pydantic import BaseModel
        from iii_console import Step, http, queue

        class Charge(BaseModel):
            card: str
            cents: int

        config = Step(name="TakeCharge", triggers=[http("POST", "/charges", body=Charge)], enqueues=["charges.new"])

        def handler(req, ctx):
            ctx.enqueue("charges.new", req.body.model_dump())
            return {"status": 202, "body": {"trace_id": ctx.trace_id}}
    """,
    "settle_step.py": """
        from pydantic import BaseModel
        from iii_console import Step, queue

        class Charge(BaseModel):
            card: str
            cents: int

        config = Step(name="Settle", triggers=[queue("charges.new", input=Charge)])

        def handler(charge, ctx):
            if charge.card == "declined":
                raise RuntimeError("card declined by the bank")
            ctx.state.set("charges", charge.card, {"cents": charge.cents})
    """,
    "watch_step.py": """
        from iii_console import Step, state

        config = Step(name="Watch", triggers=[state("charges")])

        def handler(change, ctx):
            ctx.state.set("watched", change.key, change.new)
    """,
    "tick_step.py": """
        from iii_console import Step, cron

        config = Step(name="Nightly", triggers=[cron("0 3 * * *")])

        def handler(tick, ctx):
            ctx.state.set("nightly", "last", {"manual": tick.manual})
    """,
}

CONFIG = """
queues:
  charges.new:
    max_retries: 0
    dead_letter_queue: charges.dlq
"""

USER_TESTS = """
import pytest

def test_ok_a_charge_is_settled(iii_app):
    trace = iii_app.post("/charges", json={"card": "c1", "cents": 500}).json()["trace_id"]
    iii_app.wait_for("message.processed", step="Settle", trace=trace)
    assert iii_app.state.get("charges", "c1") == {"cents": 500}

def test_fails_a_declined_charge_is_settled(iii_app):
    trace = iii_app.post("/charges", json={"card": "declined", "cents": 1}).json()["trace_id"]
    iii_app.wait_for("message.processed", step="Settle", trace=trace)

def test_ok_enqueued_bad_data_lands_in_dead_letters(iii_app):
    trace = iii_app.enqueue("charges.new", {"card": "c2"})
    iii_app.wait_for("message.dead_lettered", step="Settle", trace=trace)
    [dead] = iii_app.dead_letters("charges.dlq")
    assert dead.trace_id == trace

def test_ok_run_cron_fires_now(iii_app):
    trace = iii_app.run_cron("Nightly")
    iii_app.wait_for("message.processed", step="Nightly", trace=trace)
    assert iii_app.state.get("nightly", "last") == {"manual": True}

def test_ok_fast_mode_runs_one_handler_with_a_real_context(iii_steps):
    iii_steps.run("Settle", {"card": "c3", "cents": 7})
    assert iii_steps.state.get("charges", "c3") == {"cents": 7}
    assert iii_steps.events("state.changed", step="Settle")

def test_fails_fast_mode_runs_a_declined_charge(iii_steps):
    iii_steps.run("Settle", {"card": "declined", "cents": 7})

def test_ok_fast_mode_runs_a_cron_step_with_a_tick(iii_steps):
    iii_steps.run("Nightly")
    assert iii_steps.state.get("nightly", "last") == {"manual": False}
    iii_steps.run("Nightly", {"scheduled_ms": 1, "fired_ms": 2, "manual": True})
    assert iii_steps.state.get("nightly", "last") == {"manual": True}

def test_ok_fast_mode_runs_a_state_step_with_a_change(iii_steps):
    iii_steps.run("Watch", {"group": "charges", "key": "c9", "old": None, "new": {"cents": 1}})
    assert iii_steps.state.get("watched", "c9") == {"cents": 1}

def test_fails_waiting_for_what_never_comes(iii_app):
    iii_app.wait_for("notification.sent", step="Settle", timeout=1)
"""


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """The user's tests' outcomes: test name -> None (passed) or the failure text."""
    project = tmp_path_factory.mktemp("shop")
    for name, src in STEPS.items():
        (project / "steps").mkdir(exist_ok=True)
        (project / "steps" / name).write_text(textwrap.dedent(src))
    (project / "iii-config.yaml").write_text(CONFIG)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_charges.py").write_text(USER_TESTS)
    report = project / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.exists(), proc.stdout + proc.stderr
    out: dict[str, str | None] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failure = case.find("failure")
        error = case.find("error")
        bad = failure if failure is not None else error
        out[case.get("name", "")] = None if bad is None else (bad.get("message", "") + "\n" + (bad.text or ""))
    return out


def test_the_plugin_passes_a_users_steps_that_work(user_run: dict[str, str | None]) -> None:
    passed = {name for name, failure in user_run.items() if name.startswith("test_ok_") and failure is None}
    assert passed == {n for n in user_run if n.startswith("test_ok_")}, {
        n: user_run[n] for n in user_run if n.startswith("test_ok_")
    }
    assert len(passed) == 6


def test_the_plugin_fails_a_test_whose_step_dead_letters_with_the_steps_error(user_run: dict[str, str | None]) -> None:
    failure = user_run["test_fails_a_declined_charge_is_settled"]
    assert failure is not None and "dead-lettered" in failure and "card declined by the bank" in failure


def test_the_fast_mode_raises_the_handlers_own_exception(user_run: dict[str, str | None]) -> None:
    failure = user_run["test_fails_fast_mode_runs_a_declined_charge"]
    assert failure is not None and "RuntimeError" in failure and "card declined by the bank" in failure


def test_waiting_for_an_event_that_never_comes_fails_naming_it(user_run: dict[str, str | None]) -> None:
    failure = user_run["test_fails_waiting_for_what_never_comes"]
    assert failure is not None and "timed out after 1s waiting for notification.sent of step Settle" in failure
