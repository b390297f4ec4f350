"""Which Redis the runtime uses: the embedded default, password/ACL URLs, TLS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer, find_redis_server

from .conftest import ROOT
from .helpers import make_project, wait_for
from .test_e2e import start_cli

pytestmark = pytest.mark.slow

ECHO = """
from iii_console import Step, queue
config = Step(name="Echo", triggers=[queue("echo")])
def handler(data, ctx):
    ctx.state.set("echo", data["k"], {"ok": True})
"""


def _env_without_redis() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    return env


def test_no_url_starts_a_private_redis_under_dot_iii_and_stops_it_on_exit(tmp_path):
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    (tmp_path / "iii-config.yaml").write_text("redis:\n  url: ${REDIS_URL:}\nserver:\n  port: 0\n")
    env = _env_without_redis()
    proc = subprocess.Popen([sys.executable, "-m", "iii_console", "--no-ui"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stderr.readline()
        assert "running" in banner, banner + proc.stderr.read()
        import threading

        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let a full pipe block it
        url = json.loads((tmp_path / ".iii" / "redis.json").read_text())["url"]
        assert url.startswith("redis://127.0.0.1:")
        c = redis.Redis.from_url(url)
        assert c.config_get("bind")["bind"] == "127.0.0.1"
        assert c.config_get("appendonly")["appendonly"] == "yes"
        assert Path(c.config_get("dir")["dir"]) == (tmp_path / ".iii" / "redis").resolve()
        server_url = banner.split(" on ")[1].split(" ")[0]
        mid = httpx.post(f"{server_url}/messages", json={"text": "embedded"}).json()["id"]
        wait_for(lambda: json.loads(c.hget(Keys().state_group("messages"), mid) or "{}").get("status") == "processed",
                 what="processed on the embedded Redis")
        # Another command of the project finds the same Redis by itself.
        out = subprocess.run([sys.executable, "-m", "iii_console", "send", "--topic", "message.sent", "--data",
                              '{"id": "direct", "text": "hi"}', "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: c.hexists(Keys().state_group("messages"), "direct"), what="direct send on the embedded Redis")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    assert not (tmp_path / ".iii" / "redis.json").exists()
    assert list((tmp_path / ".iii" / "redis").glob("appendonly*"))


@pytest.fixture
def acl_redis(tmp_path):
    server = RedisServer(tmp_path / "acl", appendonly=False,
                         extra=["--user", "default", "off", "--user", "app", "on", ">s3cret pass", "~*", "&*", "+@all"]).start()
    yield server
    server.kill()


def test_acl_user_and_password_in_the_url_work(tmp_path, acl_redis):
    url = f"redis://app:s3cret%20pass@127.0.0.1:{acl_redis.port}/0"
    make_project(tmp_path / "proj", {"echo_step.py": ECHO}, "server:\n  port: 0\n")
    run = start_cli(tmp_path / "proj", "--no-ui", "--role", "worker", "--redis", url)
    try:
        out = subprocess.run([sys.executable, "-m", "iii_console", "send", "--topic", "echo", "--data", '{"k": "a"}', "--redis", url],
                             cwd=tmp_path / "proj", capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        c = redis.Redis.from_url(url)
        wait_for(lambda: c.hget(Keys().state_group("echo"), "a"), what="processed through the ACL user")
    finally:
        assert run.stop() == 0


def test_wrong_credentials_fail_closed_with_one_clear_line(tmp_path, acl_redis):
    make_project(tmp_path / "proj", {"echo_step.py": ECHO}, "")
    res = subprocess.run([sys.executable, "-m", "iii_console", "--no-ui", "--redis", f"redis://app:wrong@127.0.0.1:{acl_redis.port}/0"],
                         cwd=tmp_path / "proj", capture_output=True, text=True, timeout=60)
    assert res.returncode == 3
    assert "refused the credentials" in res.stderr and "wrong" not in res.stderr and "Traceback" not in res.stderr


def _tls_capable() -> bool:
    try:
        out = subprocess.run([find_redis_server(), "--tls-port", "0", "--port", "0", "--test-memory", "1"], capture_output=True, text=True, timeout=10)
    except Exception:
        return False
    return shutil.which("openssl") is not None and "not supported" not in (out.stdout + out.stderr).lower()


@pytest.mark.skipif(not _tls_capable(), reason="redis-server without TLS support or no openssl")
def test_rediss_url_works(tmp_path):
    d = tmp_path / "tls"
    d.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    from iii_console.core.redis_server import free_port

    port = free_port()
    proc = subprocess.Popen([find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(d / "cert.pem"), "--tls-key-file", str(d / "key.pem"),
                             "--tls-ca-cert-file", str(d / "cert.pem"), "--tls-auth-clients", "no", "--save", "", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={d / 'cert.pem'}"
        wait_for(lambda: _ping(url), what="TLS redis up")
        make_project(tmp_path / "proj", {"echo_step.py": ECHO}, "")
        run = start_cli(tmp_path / "proj", "--no-ui", "--role", "worker", "--redis", url)
        try:
            out = subprocess.run([sys.executable, "-m", "iii_console", "send", "--topic", "echo", "--data", '{"k": "t"}', "--redis", url],
                                 cwd=tmp_path / "proj", capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            wait_for(lambda: redis.Redis.from_url(url).hget(Keys().state_group("echo"), "t"), what="processed over TLS")
        finally:
            assert run.stop() == 0
    finally:
        proc.kill()
        proc.wait()


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False
