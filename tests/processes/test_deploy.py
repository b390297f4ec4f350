"""The systemd units in deploy/systemd/, one per role, as systemd itself reads them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import ROOT

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


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections: key -> every value it is given (systemd allows repeats), comments left out."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            assert section not in out, f"line {n}: section [{section}] twice"
            out[section] = {}
            continue
        assert section is not None, f"line {n}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep and key.strip() and key.strip() == key.strip().strip("-"), f"line {n}: not KEY=VALUE: {line!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_every_unit_runs_a_command_line_our_cli_accepts_and_stops_it_gracefully(unit: Path) -> None:
    """Each unit's ExecStart is parsed by iii-console's own click parser (every option and value checked, nothing run),
    and the unit keeps what a supervised run needs: an env file, a user, SIGTERM to the main process only, a restart on
    failure, a stop timeout above what the role drains for, and a sandbox that leaves the project's .iii/ writable."""
    import shlex

    from iii_console.cli.main import cli
    from iii_console.core.config import Config

    role = unit.stem.removeprefix("iii-console-")
    sections = unit_sections(unit.read_text())
    assert set(sections) == {"Unit", "Service", "Install"}
    service = {k: v[-1] for k, v in sections["Service"].items()}
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/iii-console"), argv
    ctx = cli.make_context("iii-console", argv[1:])  # a bad option, choice or range raises click's UsageError here
    assert ctx.params["no_ui"] is True and ctx.params["role"] == (role,), ctx.params
    leftover = [*vars(ctx).get("_protected_args", []), *ctx.args]  # a subcommand (click 8.2+ keeps it apart), extra words
    assert not leftover, argv
    assert service["Type"] == "exec"
    assert service["User"] and service["User"] != "root"
    assert service["EnvironmentFile"].lstrip("-").startswith("/")
    assert service["WorkingDirectory"] == "/opt/app" and argv[0].startswith("/opt/app/")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    drain = {"worker": Config().workers.shutdown_timeout + 5, "server": 10.0, "scheduler": 0.0}[role]
    assert float(service["TimeoutStopSec"]) >= drain + 5, (role, service["TimeoutStopSec"], drain)
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    assert "/opt/app/.iii" in sections["Service"]["ReadWritePaths"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
