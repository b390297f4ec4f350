"""``iii-console new``, and the wheel: a project of your own, installed anywhere."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from ..helpers import ROOT, wait_for

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "III_CONFIG", "VIRTUAL_ENV")}


def _new(where: Path, name: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "iii_console", "new", name], cwd=where, capture_output=True, text=True, timeout=60, env=_env()
    )


def _pytest(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The project's own tests, run as its user runs them."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), **env},
    )


def test_new_makes_a_project_whose_topics_all_have_subscribers_and_whose_own_tests_pass(tmp_path: Path) -> None:
    made = _new(tmp_path, "shop")
    assert made.returncode == 0, made.stderr
    project = tmp_path / "shop"
    assert ".iii/" in (project / ".gitignore").read_text().splitlines()
    readme = (project / "README.md").read_text()
    assert "iii-console " in readme and "python -m pytest" in readme and "# shop" in readme
    check = subprocess.run(
        [sys.executable, "-m", "iii_console", "config", "check"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert check.returncode == 0 and "warning" not in check.stdout + check.stderr, check.stdout + check.stderr
    tests = _pytest(project)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr


def test_the_plugin_reads_the_config_as_the_app_does_from_the_environment_and_dotenv(tmp_path: Path) -> None:
    """Given a new project whose config takes its auth token from `.env` and its key prefix from an exported variable,
    when its own tests run, then they pass: the helpers send the token and read the prefix the app writes under."""
    assert _new(tmp_path, "shop").returncode == 0
    project = tmp_path / "shop"
    config = project / "iii-config.yaml"
    config.write_text(
        config.read_text().replace("server:\n", "server:\n  auth_token: ${III_AUTH_TOKEN:}\n")
        + "redis:\n  prefix: ${APP_PREFIX:iii:}\n"
    )
    (project / ".env").write_text("III_AUTH_TOKEN=from-the-dotenv-file\n")
    tests = _pytest(project, APP_PREFIX="shop:")
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr


def test_new_refuses_a_folder_that_is_not_empty_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "keep.txt").write_text("mine")
    made = _new(tmp_path, "shop")
    assert made.returncode == 2
    assert made.stderr.strip().count("\n") == 0 and "already exists and is not empty" in made.stderr
    assert sorted(p.name for p in (tmp_path / "shop").iterdir()) == ["keep.txt"]


def test_a_wheel_built_with_build_installs_into_a_clean_venv_and_runs_a_new_project(tmp_path: Path, redis_url: str) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = dist.glob("iii_console-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    installed = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=900
    )
    assert installed.returncode == 0, installed.stderr[-2000:]

    assert _new(tmp_path, "app", python=py).returncode == 0
    app = tmp_path / "app"
    proc = subprocess.Popen(
        [str(env_dir / "bin" / "iii-console"), "--no-ui", "--port", "0", "--redis", redis_url],
        cwd=app,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        banner = proc.stderr.readline()  # type: ignore[union-attr]
        found = re.search(r"on (http://\S+) with", banner)
        assert found, banner
        assert httpx.post(f"{found.group(1)}/orders", json={"sku": "W1", "qty": 3}).status_code == 202

        def placed() -> bool:
            got = subprocess.run(
                [str(env_dir / "bin" / "iii-console"), "state", "get", "orders", "W1", "--redis", redis_url, "--json"],
                cwd=app,
                capture_output=True,
                text=True,
                env=_env(),
            )
            return got.returncode == 0 and '"qty": 3' in got.stdout

        wait_for(placed, timeout=30, what="the order placed by the installed wheel's workers")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(45) == 0
