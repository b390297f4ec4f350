"""The systemd units in deploy/systemd/, one per role, as systemd itself reads them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def test_there_is_a_unit_per_role() -> None:
    roles = {u.stem.removeprefix("iii-console-") for u in UNITS}
    assert roles == {"server", "worker", "scheduler"}
    for unit in UNITS:
        assert f"--role {unit.stem.removeprefix('iii-console-')}" in unit.read_text() and "--no-ui" in unit.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (no systemd here)")
def test_systemd_analyze_verify_accepts_every_unit_without_a_warning(tmp_path: Path) -> None:
    """The units name /opt/app and /etc/iii-console.env; verify checks that ExecStart exists, so
    they are verified with those paths moved under a temporary folder holding a real iii-console."""
    app = tmp_path / "opt" / "app"
    (app / ".venv" / "bin").mkdir(parents=True)
    (app / ".venv" / "bin" / "iii-console").symlink_to(Path(sys.executable).parent / "iii-console")
    (tmp_path / "iii-console.env").write_text("REDIS_URL=redis://127.0.0.1:6379/0\n")
    copies = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/app", str(app)).replace("/etc/iii-console.env", str(tmp_path / "iii-console.env"))
        (tmp_path / unit.name).write_text(text)
        copies.append(str(tmp_path / unit.name))
    done = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr + done.stdout
