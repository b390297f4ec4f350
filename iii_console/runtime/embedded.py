"""The project's embedded Redis: started when no URL is configured, shared by
every iii-console process of the project through ``.iii/redis.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from iii_console.core.redis_server import RedisServer


def _info_path(data_dir: Path) -> Path:
    return data_dir / "redis.json"


def running_url(data_dir: Path) -> str | None:
    """URL of this project's embedded Redis if one is up (started by another process)."""
    p = _info_path(data_dir)
    try:
        info = json.loads(p.read_text())
        c = redis.Redis.from_url(info["url"], socket_connect_timeout=0.5)
        try:
            if c.ping():
                return str(info["url"])
        finally:
            c.close()
    except (OSError, ValueError, KeyError, redis.RedisError):
        pass
    return None


class EmbeddedRedis:
    """Start a private Redis (AOF on, loopback only) unless the project already has one."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.server: RedisServer | None = None
        self.url = ""

    def start(self) -> str:
        existing = running_url(self.data_dir)
        if existing:
            self.url = existing
            return existing
        self.server = RedisServer(self.data_dir / "redis", appendonly=True).start()
        self.url = self.server.url
        _info_path(self.data_dir).write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
        return self.url

    @property
    def owned(self) -> bool:
        return self.server is not None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            try:
                _info_path(self.data_dir).unlink()
            except OSError:
                pass
            self.server = None
