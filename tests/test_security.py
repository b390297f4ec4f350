"""Security defaults and back-pressure, against the real server."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from .conftest import ROOT
from .helpers import events, make_project, wait_for
from .test_e2e import start_cli
from .test_queue import producer, project, runtime  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture
def seed(tmp_path, redis_url):
    shutil.copytree(ROOT / "steps", tmp_path / "steps")

    def write(server_yaml: str):
        make_project(tmp_path, {}, f"server:\n  port: 0\n{server_yaml}", redis_url=redis_url)
        return tmp_path

    return write


def test_refuses_to_listen_beyond_loopback_without_a_token(seed):
    proj = seed("  host: 0.0.0.0\n")
    res = subprocess.run([sys.executable, "-m", "iii_console", "--no-ui", "--role", "server"], cwd=proj,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "refusing to listen on 0.0.0.0 without server.auth_token" in res.stderr


def test_with_a_token_requests_without_it_get_401_and_health_stays_open(seed, r, keys):
    proj = seed("  auth_token: s3cret-token\n")
    run = start_cli(proj, "--no-ui", "--role", "server")
    try:
        assert httpx.post(f"{run.url}/messages", json={"text": "x"}).status_code == 401
        wrong = httpx.post(f"{run.url}/messages", json={"text": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{run.url}/metrics").status_code == 401
        assert r.hlen(keys.state_group("messages")) == 0
        ok = httpx.post(f"{run.url}/messages", json={"text": "x"}, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 202
        assert httpx.get(f"{run.url}/health").status_code == 200
    finally:
        run.stop()


def test_host_header_allow_list_stops_dns_rebinding(seed, r, keys):
    run = start_cli(seed(""), "--no-ui", "--role", "server")
    try:
        evil = httpx.post(f"{run.url}/messages", json={"text": "x"}, headers={"Host": "attacker.example:3111"})
        assert evil.status_code == 400 and "attacker.example" in evil.json()["error"]
        assert r.hlen(keys.state_group("messages")) == 0
        port = run.url.rsplit(":", 1)[1]
        assert httpx.post(f"{run.url}/messages", json={"text": "x"}, headers={"Host": f"localhost:{port}"}).status_code == 202
    finally:
        run.stop()


def test_flooded_topic_answers_429_and_every_accepted_message_is_kept(seed, r, keys):
    run = start_cli(seed("  max_queue_depth: 20\n"), "--no-ui", "--role", "server")  # no workers: the queue only grows
    try:
        codes = []
        with httpx.Client() as client:
            for i in range(200):
                codes.append(client.post(f"{run.url}/messages", json={"text": f"m{i}"}).status_code)
        assert set(codes) <= {202, 429} and codes.count(429) > 0
        accepted = codes.count(202)
        queued = sum(r.llen(k) for k in r.scan_iter(match=f"{keys.dramatiq_namespace}:message.sent--*") if r.type(k) == b"list" and not k.endswith(b".wake"))
        assert queued == accepted and accepted < 200
        assert r.hlen(keys.state_group("messages")) == accepted  # rejected requests wrote nothing
        limited = httpx.post(f"{run.url}/messages", json={"text": "more"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    finally:
        run.stop()


LEAKY = """
from iii_console import Step, queue
config = Step(name="Leaky", triggers=[queue("leak")])
def handler(data, ctx):
    ctx.logger.info("calling api", api_key="k-123", user={"name": "ada", "password": "hunter2"})
    ctx.emit("notification.sent", data={"to": "ada", "authorization": "Bearer xyz"})
"""


def test_secrets_are_redacted_in_events_and_logs(project, runtime, producer, r, keys):  # noqa: F811
    cfg, steps = project({"leaky_step.py": LEAKY})
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("leak", {"token": "t-999", "text": "hi"}, trace_id="t")
    wait_for(lambda: events(r, keys, "notification.sent"), what="step ran")
    raw = b" ".join(v for _id, f in r.xrange(keys.events) for v in f.values())
    for secret in (b"k-123", b"hunter2", b"Bearer xyz", b"t-999"):
        assert secret not in raw
    [log] = [e for e in events(r, keys, "log") if e.step == "Leaky"]
    assert log.data["api_key"] == "[redacted]" and log.data["user"] == {"name": "ada", "password": "[redacted]"}


def test_messages_are_json_never_pickle(project, runtime, producer, r, keys):  # noqa: F811
    """A pickled payload smuggled into a queue is never unpickled: it is quarantined as undecodable."""
    import pickle
    import uuid
    from datetime import datetime

    from iii_console.adapters.queue.producer import EnqueueError
    from iii_console.core.dlq import DeadLetterStore

    cfg, steps = project({"leaky_step.py": LEAKY})
    with pytest.raises(EnqueueError, match="not JSON-serialisable"):
        producer(cfg, steps).enqueue("leak", {"when": datetime.now()}, trace_id="t")

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    rid = str(uuid.uuid4())
    r.hset(f"{keys.dramatiq_namespace}:leak--Leaky--normal.msgs", rid, pickle.dumps(Boom()))
    r.rpush(f"{keys.dramatiq_namespace}:leak--Leaky--normal", rid)
    runtime(cfg, steps)
    wait_for(lambda: DeadLetterStore(r, keys).count("quarantine") == 1, what="pickle quarantined")
