#!/usr/bin/env python3
"""Bootstrap: the two commands a fresh machine needs, with nothing but Python 3.11+.

    python3 dev.py [ARGS...]     run iii-console (the live console by default) with ARGS
    python3 dev.py test [ARGS]   run the test suite (pytest ARGS)
    python3 dev.py bench [ARGS]  run the benchmarks (bench/README.md; installs the peers)
    python3 dev.py lint          ruff check, mypy and lint-imports; non-zero on any finding

Both create ``.venv/`` on first use and (re)install the project into it whenever
``pyproject.toml`` changes, so a clone needs no manual setup. Run with another
Python than the one ``.venv/`` was made with (``python3.13 dev.py test``), they use
``.venv-3.13/`` instead, so each interpreter keeps its own environment.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# The optional extras ``dev.py test`` installs besides the package (pyproject.toml).
EXTRAS = [
    "test",
    "examples",
    "otel",
    "web",
    "lint",
    "rabbitmq",
]


def _venv_version(venv_dir: Path) -> str | None:
    try:
        cfg = (venv_dir / "pyvenv.cfg").read_text()
    except OSError:
        return None
    for line in cfg.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            return ".".join(value.strip().split(".")[:2])
    return None


def _pick_venv() -> Path:
    """``.venv`` if it is this Python's (or does not exist yet), else ``.venv-X.Y``."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    default = ROOT / ".venv"
    return default if _venv_version(default) in (None, mine) else ROOT / f".venv-{mine}"


VENV = _pick_venv()
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".iii-installed"
LOCK = ROOT / f"{VENV.name}.lock"

if sys.version_info < (3, 11):  # noqa: UP036  (dev.py runs under any python3, to say which one it needs)
    sys.exit(f"dev.py: iii-console needs Python 3.11 or newer; this is {sys.version.split()[0]} ({sys.executable})")


class SetupFailed(Exception):
    pass


def _locked(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` holding an exclusive lock on ``.venv.lock``.

    Two first runs at once (``dev.py`` in one terminal, ``dev.py test`` in another)
    would otherwise both create the virtualenv and run pip into it together, and
    one of them fails half-way.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first runs are the user's to avoid
        return fn()
    with open(LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            return fn()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _installed(digest: str) -> bool:
    return STAMP.exists() and STAMP.read_text() == digest and (BIN / "python").exists()


def _ensure_env() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if _installed(digest):
        return

    def install() -> None:
        if _installed(digest):  # another dev.py finished it while we waited for the lock
            return
        if not (BIN / "python").exists():
            print(f"dev.py: creating {VENV.name}", file=sys.stderr)
            venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
        print(f"dev.py: installing iii-console and its test dependencies into {VENV.name}", file=sys.stderr)
        pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        if subprocess.run([*pip, "install", "-e", f"{ROOT}[{','.join(EXTRAS)}]"]).returncode != 0:
            raise SetupFailed(f"pip could not install the project into {VENV.name} (see pip's output above)")
        STAMP.write_text(digest)

    _locked(install)


def _child_setup() -> None:
    """In the child, between fork and exec (POSIX).

    Ctrl+C goes to the child again: this wrapper ignores SIGINT, and an ignored
    signal stays ignored across exec. On Linux the child also gets SIGTERM if
    this wrapper dies: an IDE's stop button or ``kill -9`` on the wrapper would
    otherwise leave iii-console running in the background, holding its port and
    its Redis; SIGTERM lets it drain and stop its Redis as on Ctrl+C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


@functools.cache
def _libc():  # type: ignore[no-untyped-def]
    """libc, opened once: the parent opens it before the fork, the child reuses that handle."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _whole_suite(args: list[str]) -> bool:
    """No selection (a path, ``-k``, ``-m``, a node id) and no process options of its own."""
    return not any(
        not a.startswith("-") or a in ("-k", "-m", "-n", "-p") or a.startswith(("-n", "--numprocesses", "--lf", "--last-failed"))
        for a in args
    )


def _parallel(args: list[str]) -> list[str]:
    """pytest-xdist options for a run of the whole suite, else none.

    Most of the suite's time is spent waiting on the real processes it starts
    (servers, workers, schedulers, Redis), so a few pytest processes side by side
    finish it in about half the time even on two cores; each has its own Redis.
    A run given a selection (a path, ``-k``, a node id) or its own ``-n``/``-p``
    stays in one process. ``III_TEST_WORKERS=N`` sets the count (0: one process).
    """
    if not _whole_suite(args):
        return []
    env = os.environ.get("III_TEST_WORKERS", "")
    n = int(env) if env.isdigit() else min(4, (os.cpu_count() or 1) + 1)
    return ["-n", str(n), "--dist", "worksteal"] if n > 1 else []


def _ensure_browser() -> None:
    """Chromium for the web console's browser test, from Debian as root when it is missing.

    Only for a run of the whole suite; elsewhere (not root, no apt-get, no network) the
    test is skipped with the reason, as it says.
    """
    if any(shutil.which(b) for b in ("chromium", "chromium-browser")) or os.path.exists("/usr/bin/chromium"):
        return
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    print("dev.py: installing Chromium for the browser test (apt-get install -y chromium)...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"dev.py: could not install Chromium ({exc}); the browser test will be skipped", file=sys.stderr)
        return
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        print(f"dev.py: could not install Chromium ({tail[0]}); the browser test will be skipped", file=sys.stderr)


#: What ``dev.py lint`` runs, in order; every one runs, and any finding fails the whole.
LINTERS = [
    ["ruff", "check", "."],
    ["ruff", "format", "--check", "."],
    ["mypy"],
    ["lint-imports"],
]


def lint() -> int:
    """Run every linter (configured in pyproject.toml); the first non-zero exit code, or 0."""
    code = 0
    for cmd in LINTERS:
        print(f"dev.py lint: {' '.join(cmd)}", file=sys.stderr, flush=True)
        done = subprocess.run([str(BIN / cmd[0]), *cmd[1:]])
        code = code or done.returncode
    return code


def main(argv: list[str]) -> int:
    try:
        _ensure_env()
    except (SetupFailed, OSError, subprocess.SubprocessError) as exc:
        print(f"dev.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if argv[:1] == ["lint"]:
        os.chdir(ROOT)
        return lint()
    if argv[:1] == ["test"]:
        if _whole_suite(argv[1:]):
            _ensure_browser()
        cmd = [str(BIN / "python"), "-m", "pytest", *_parallel(argv[1:]), *argv[1:]]
    elif argv[:1] == ["bench"]:
        cmd = [str(BIN / "python"), "-m", "bench", *argv[1:]]
    else:
        cmd = [str(BIN / "iii-console"), *argv]
    os.chdir(ROOT)
    # The child handles Ctrl+C / SIGTERM itself (it drains and stops its Redis);
    # this wrapper only waits for it and passes SIGTERM on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            _libc()  # loaded before fork: the child only calls into it
        except OSError:
            pass
    child = subprocess.Popen(cmd, preexec_fn=_child_setup if os.name != "nt" else None)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        # A closed terminal: pass the hang-up on (run as the terminal's first process, as tmux
        # runs a pane's command, this wrapper is the only one the kernel tells) and wait for the
        # child to drain rather than die first (dying would SIGTERM it mid-stop). Under nohup
        # SIGHUP stays ignored, as it was.
        signal.signal(signal.SIGHUP, lambda *_: child.send_signal(signal.SIGHUP))
    code = child.wait()
    # A child killed by a signal reports -N; a shell reports 128+N.
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
