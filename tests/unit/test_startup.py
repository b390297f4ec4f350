"""What a start says while a step file's import takes long (``runtime/startup.py``)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from iii_console.runtime.startup import SlowImports, interruptible


def test_a_fast_import_says_nothing_and_a_slow_one_is_named_then_timed(tmp_path: Path) -> None:
    said: list[str] = []
    root = tmp_path / "steps"
    with SlowImports(said.append, root, first_s=0.2, every_s=0.3) as on_file:
        on_file(root / "fast_step.py")
        time.sleep(0.05)
        on_file(root / "sub" / "slow_step.py")
        time.sleep(0.65)
        on_file(None)
    assert said[0] == "iii-console: importing steps/sub/slow_step.py (0 s so far; its module code runs on import; Ctrl+C stops)"
    assert said[1].startswith("iii-console: still importing steps/sub/slow_step.py (")
    assert said[-1].startswith("iii-console: imported steps/sub/slow_step.py in 0.")
    assert not any("fast_step" in line for line in said)
    assert 3 <= len(said) <= 4, said


def test_a_start_stopped_mid_import_does_not_say_the_file_was_imported(tmp_path: Path) -> None:
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt), SlowImports(said.append, tmp_path / "steps", first_s=0.05) as on_file:
        on_file(tmp_path / "steps" / "slow_step.py")
        time.sleep(0.2)
        raise KeyboardInterrupt
    assert said and not any("imported" in line for line in said), said


def test_a_line_that_cannot_be_written_does_not_stop_the_imports(tmp_path: Path) -> None:
    def broken(_line: str) -> None:
        raise OSError("the terminal is gone")

    with SlowImports(broken, tmp_path, first_s=0.01) as on_file:
        on_file(tmp_path / "a_step.py")
        time.sleep(0.1)
        on_file(None)


def test_a_ctrl_c_inside_is_a_keyboard_interrupt_and_the_handler_before_comes_back() -> None:
    seen: list[int] = []

    def mine(signum: int, _frame: object) -> None:
        seen.append(signum)

    before = signal.signal(signal.SIGINT, mine)
    try:
        with pytest.raises(KeyboardInterrupt), interruptible():
            signal.raise_signal(signal.SIGINT)
            time.sleep(1)  # not reached: the signal raised at once
        assert signal.getsignal(signal.SIGINT) is mine
        signal.raise_signal(signal.SIGINT)
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, before)


def test_outside_the_main_thread_nothing_changes() -> None:
    handlers: list[object] = []

    def run() -> None:
        with interruptible():
            handlers.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert handlers == [signal.getsignal(signal.SIGINT)]
