"""Uploads, downloads and progress streams, through the real CLI (server and worker processes on real Redis,
a real port) with the blob store on a shared folder (``blobs.url: file://...``) that both processes use."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import httpx
import pytest
import redis

from iii_console.core.keys import Keys

from ..helpers import events, make_project, start_cli, wait_for

pytestmark = pytest.mark.slow

KEYS = Keys()

STEPS = {
    "upload_step.py": """
        from iii_console import Step, http
        config = Step(name="Upload", triggers=[
            http("POST", "/images", accept=["image/*", "application/octet-stream", "text/csv"], max_body_bytes=3_000_000)],
            enqueues=["images.uploaded"])

        def handler(req, ctx):
            ref = req.body
            ids = ctx.enqueue("images.uploaded", {"image": ref})
            return {"status": 201, "body": {"ref": ref, "ids": ids, "trace_id": ctx.trace_id}}
        """,
    # The dict form, Motia-style, with an async handler.
    "csv_step.py": """
        config = {"name": "Csv", "triggers": [{"type": "http", "method": "PUT", "path": "/tables/{name}",
                                               "accept": ["text/csv"], "maxBodyBytes": 1000}]}

        async def handler(req, ctx):
            with await ctx.blobs.open(req.body) as fh:
                rows = fh.read().decode().splitlines()
            return {"status": 200, "body": {"rows": len(rows), "name": req.body["name"]}}
        """,
    "process_step.py": """
        import hashlib, struct
        from iii_console import Step, queue
        config = Step(name="Measure", triggers=[queue("images.uploaded")])

        def handler(data, ctx):
            ref = data["image"]
            raw = ctx.blobs.open(ref).read()
            info = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "path": str(ctx.blobs.path(ref))}
            if raw[:8] == b"\\x89PNG\\r\\n\\x1a\\n":
                info["width"], info["height"] = struct.unpack(">II", raw[16:24])
            flipped = ctx.blobs.put(raw[::-1], content_type="application/octet-stream", name="flipped.bin")
            for i in range(1, 4):
                ctx.progress(i, 3, note=f"step {i}")
            ctx.state.set("files", ref["$blob"][7:], {"ref": ref, "flipped": flipped, **info})
        """,
    "download_step.py": """
        from iii_console import Step, http
        from iii_console import download
        config = Step(name="Download", triggers=[http("GET", "/files/{sha}")])

        def handler(req, ctx):
            rec = ctx.state.get("files", req.path_params["sha"])
            if rec is None:
                return download("sha256:" + req.path_params["sha"])   # unknown: the server answers 404
            return rec["flipped"] if req.query.get("flipped") else rec["ref"]
        """,
    "report_step.py": """
        from iii_console import Step, http
        from iii_console import download
        config = Step(name="Report", triggers=[http("GET", "/report.csv")])

        def handler(ctx):
            return download(b"id,total\\n1,10\\n2,20\\n", content_type="text/csv", filename="répört.csv")
        """,
    "progress_step.py": """
        from iii_console import Step, http
        from iii_console import progress_stream
        config = Step(name="Progress", triggers=[http("GET", "/progress/{trace}")])

        def handler(req, ctx):
            return progress_stream(req.path_params["trace"], interval_ms=50, timeout_s=20)
        """,
    "slow_step.py": """
        import time
        from iii_console import Step, http, queue
        config = Step(name="Slow", triggers=[http("POST", "/jobs"), queue("jobs.run")], enqueues=["jobs.run"])

        def handler(inp, ctx):
            if ctx.trigger["type"] == "http":
                ctx.enqueue("jobs.run", {"n": 5})
                return {"status": 202, "body": {"trace_id": ctx.trace_id}}
            time.sleep(0.5)   # the client connects to the stream meanwhile
            for i in range(1, 6):
                ctx.progress(i, 5)
                time.sleep(0.15)
        """,
    "big_step.py": """
        from iii_console import Step, http
        config = Step(name="Big", triggers=[http("POST", "/big")], enqueues=["big.in"])

        def handler(req, ctx):
            return {"status": 202, "body": {"ids": ctx.enqueue("big.in", req.body)}}
        """,
    "big_state_step.py": """
        from iii_console import Step, state
        config = Step(name="BigState", triggers=[state("big-values")])

        def handler(change, ctx):
            ctx.state.set("seen-big", change.key, {"len": len(change.new["blob"])})
        """,
    "big_in_step.py": """
        from iii_console import Step, queue
        config = Step(name="BigIn", triggers=[queue("big.in")])
        def handler(data, ctx):
            pass
        """,
}


def png(width: int, height: int) -> bytes:
    """A real PNG image (8-bit RGB gradient), built with zlib: any image viewer opens it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = bytearray()
    for y in range(height):
        raw.append(0)
        for x in range(width):
            raw += bytes((x * 255 // width, y * 255 // height, (x ^ y) & 255))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(raw), 1))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory, redis_server):
    root = tmp_path_factory.mktemp("uploads")
    shared = root / "shared-blobs"
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    make_project(
        root,
        STEPS,
        f"server:\n  port: 0\nblobs:\n  url: {shared.as_uri()}\nqueues:\n  big.in:\n    max_payload_bytes: 65536\n",
        redis_url=redis_server.url,
    )
    run = start_cli(root, "--no-ui")
    run.root, run.shared = root, shared  # type: ignore[attr-defined]
    yield run
    assert run.stop() == 0
    client.close()


def stored(app) -> list:
    return sorted(p for p in (app.shared / "sha256").rglob("*") if p.is_file())


def test_an_uploaded_image_is_streamed_to_the_shared_store_processed_by_a_worker_and_downloaded_with_ranges(app, rc):
    """Given a raw-body step taking image/*, when a real PNG is POSTed, then the handler gets its ref, a worker process
    reads the same bytes from the shared folder (same sha256, its width and height), and GET answers the file whole
    and in byte ranges (206), every byte checked by sha256."""
    image = png(640, 480)
    digest = hashlib.sha256(image).hexdigest()
    resp = httpx.post(
        f"{app.url}/images",
        content=image,
        headers={"content-type": "image/png", "content-disposition": 'attachment; filename="cat.png"'},
    )
    assert resp.status_code == 201, resp.text
    ref = resp.json()["ref"]
    assert ref == {"$blob": f"sha256:{digest}", "size": len(image), "content_type": "image/png", "name": "cat.png"}
    rec = wait_for(
        lambda: (lambda raw: json.loads(raw) if raw else None)(rc.hget(KEYS.state_group("files"), digest)),
        what="the worker's record",
    )
    assert (rec["sha256"], rec["size"], rec["width"], rec["height"]) == (digest, len(image), 640, 480)
    assert rec["path"].startswith(str(app.shared))

    whole = httpx.get(f"{app.url}/files/{digest}")
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == digest
    assert whole.headers["content-type"] == "image/png" and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-disposition"].startswith('attachment; filename="cat.png"')
    assert whole.headers["etag"] == f'"{digest}"' and whole.headers["x-trace-id"]

    got = bytearray()
    size, step = len(image), 100_000
    for first in range(0, size, step):
        part = httpx.get(f"{app.url}/files/{digest}", headers={"range": f"bytes={first}-{first + step - 1}"})
        assert part.status_code == 206
        last = min(first + step, size) - 1
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert int(part.headers["content-length"]) == last - first + 1
        got += part.content
    assert hashlib.sha256(bytes(got)).hexdigest() == digest
    tail = httpx.get(f"{app.url}/files/{digest}", headers={"range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == image[-10:]
    past = httpx.get(f"{app.url}/files/{digest}", headers={"range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"

    flipped = httpx.get(f"{app.url}/files/{digest}", params={"flipped": "1"})
    assert flipped.content == image[::-1] and "flipped.bin" in flipped.headers["content-disposition"]
    head = httpx.head(f"{app.url}/files/{digest}")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(size)

    # The same upload again is free: one file, an equal ref.
    again = httpx.post(f"{app.url}/images", content=image, headers={"content-type": "image/png"})
    assert again.json()["ref"]["$blob"] == ref["$blob"]
    assert sum(1 for p in stored(app) if p.name == digest) == 1
    # The console and tail see the ref, never the bytes.
    [enq] = [e for e in events(rc, KEYS, "message.enqueued") if e.topic == "images.uploaded"][:1]
    assert enq.data["payload"]["image"]["$blob"] == ref["$blob"] and len(json.dumps(enq.data)) < 1000


def test_a_csv_upload_in_the_dict_form_reaches_an_async_handler(app):
    """Given the dict form with PUT and text/csv, when a CSV is sent, then the async handler reads it through ctx.blobs."""
    resp = httpx.put(
        f"{app.url}/tables/orders", content=b"id,qty\n1,2\n3,4\n", headers={"content-type": "text/csv; charset=utf-8"}
    )
    assert resp.status_code == 200 and resp.json() == {"rows": 3, "name": None}


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ('attachment; filename="€-report.csv"'.encode(), "€-report.csv"),  # raw UTF-8, as browsers send it
        (b"attachment; filename*=UTF-8''%E2%82%AC-report.csv", "€-report.csv"),
        (b"attachment; filename=\"old.csv\"; filename*=UTF-8''%C3%A9t%C3%A9.csv", "été.csv"),
        (b'attachment; filename="a\\"b.csv"', 'a"b.csv'),
        (b'attachment; filename="C:\\Users\\ada\\q3.csv"', "q3.csv"),
        (b'attachment; filename="../../etc/passwd"', "passwd"),
        (b"attachment", None),
    ],
)
def test_an_uploads_file_name_is_read_as_the_client_meant_it_without_folders(app, disposition, name):
    """Given a raw-body step, when a file is sent with a Content-Disposition naming it (raw UTF-8, RFC 8187's
    filename*, escaped quotes, a Windows or relative path), then the handler's ref carries the name the client
    meant, its last path part only."""
    resp = httpx.put(
        f"{app.url}/tables/orders",
        content=b"id\n1\n",
        headers=[(b"content-type", b"text/csv"), (b"content-disposition", disposition)],
    )
    assert resp.status_code == 200 and resp.json() == {"rows": 2, "name": name}


def test_undeclared_types_and_oversized_bodies_are_refused_and_store_nothing(app):
    """Given raw-body steps with limits, when a body of an undeclared type, one over the step's max_body_bytes (with
    Content-Length, and chunked) or JSON to an upload route arrives, then 415 or 413 names the field, and no blob nor
    temporary file is left."""
    before = stored(app)
    bad = httpx.post(f"{app.url}/images", content=b"<svg/>", headers={"content-type": "text/html"})
    assert bad.status_code == 415
    body = bad.json()
    assert (
        body["accept"] == ["image/*", "application/octet-stream", "text/csv"]
        and body["fields"][0]["field"] == "headers.Content-Type"
    )
    assert httpx.post(f"{app.url}/images", json={"a": 1}).status_code == 415
    assert httpx.post(f"{app.url}/images", content=b"x").status_code == 415  # no Content-Type at all

    big = httpx.put(f"{app.url}/tables/t", content=b"a,b\n" * 300, headers={"content-type": "text/csv"})
    assert big.status_code == 413 and big.json()["limit"] == 1000 and big.json()["fields"][0]["field"] == "body"

    def chunks():
        for _ in range(40):
            yield b"\x00" * 100_000

    chunked = httpx.post(f"{app.url}/images", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert chunked.status_code == 413 and chunked.json()["limit"] == 3_000_000
    assert stored(app) == before
    assert not list((app.shared / "tmp").iterdir())


def test_cross_site_uploads_are_refused_without_a_token(app):
    """Given no server.auth_token, when a page on another site posts an upload (a form post: Origin of that site, or
    Sec-Fetch-Site: cross-site), then 403 and nothing is stored."""
    before = stored(app)
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        resp = httpx.post(f"{app.url}/images", content=b"id\n1\n" * 10, headers={"content-type": "text/csv", **headers})
        assert resp.status_code == 403, resp.text
        resp = httpx.post(f"{app.url}/images", files={"f": ("a.csv", b"id\n1\n", "text/csv")}, headers=headers)
        assert resp.status_code == 403
    assert stored(app) == before


def test_bytes_answer_with_a_content_type_and_a_unicode_file_name(app):
    resp = httpx.get(f"{app.url}/report.csv")
    assert resp.status_code == 200 and resp.content == b"id,total\n1,10\n2,20\n"
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"] == "attachment; filename=\"r_p_rt.csv\"; filename*=UTF-8''r%C3%A9p%C3%B6rt.csv"
    part = httpx.get(f"{app.url}/report.csv", headers={"range": "bytes=3-7"})
    assert part.status_code == 206 and part.content == b"id,total\n"[3:8]


def test_an_unknown_blob_is_a_404_naming_it(app):
    resp = httpx.get(f"{app.url}/files/{'f' * 64}")
    assert resp.status_code == 404 and "no blob sha256:ffff" in resp.json()["error"]


def test_an_oversized_message_from_an_http_step_is_a_413_pointing_to_blobs(app, rc):
    """Given a topic with max_payload_bytes 64 KiB, when an HTTP step enqueues a 100 KB body, then 413 names the topic,
    the limit and ctx.blobs, and no message is enqueued."""
    resp = httpx.post(f"{app.url}/big", json={"rows": "z" * 100_000})
    assert resp.status_code == 413, resp.text
    body = resp.json()
    assert body["topic"] == "big.in" and body["limit"] == 65536 and "ctx.blobs.put" in body["error"]
    assert body["fields"][0]["field"] == "body"
    assert not [e for e in events(rc, KEYS, "message.enqueued") if e.topic == "big.in"]
    assert httpx.post(f"{app.url}/big", json={"rows": "z"}).status_code == 202


def test_a_progress_endpoint_streams_server_sent_events_until_done(app):
    """Given a job that reports progress 1..5 of 5, when a client opens its progress stream, then it reads progress
    events in order as server-sent events and a done event, and the stream ends."""
    trace = httpx.post(f"{app.url}/jobs", json={}).json()["trace_id"]
    seen: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{app.url}/progress/{trace}", timeout=20) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        kind = None
        for ln in resp.iter_lines():
            if ln.startswith("event: "):
                kind = ln[7:]
            elif ln.startswith("data: "):
                seen.append((kind, json.loads(ln[6:])))
    progress = [d for k, d in seen if k == "progress"]
    assert progress[-1]["done"] == 5 and progress[-1]["total"] == 5 and progress[-1]["step"] == "Slow"
    assert [d["done"] for d in progress] == sorted(d["done"] for d in progress)
    assert len(progress) >= 2
    assert seen[-1] == ("done", {"trace_id": trace})


def test_openapi_lists_the_raw_body_types(app):
    doc = httpx.get(f"{app.url}/openapi.json").json()
    body = doc["paths"]["/images"]["post"]["requestBody"]
    assert set(body["content"]) == {"image/*", "application/octet-stream", "text/csv"}


def test_with_a_token_a_cross_site_upload_is_left_to_the_token(tmp_path, redis_server):
    """Given server.auth_token, when a cross-site upload comes without the token it is 401, with it 201: the token,
    not the browser's site marking, decides (the same rule as every other request)."""
    make_project(
        tmp_path,
        {"upload_step.py": STEPS["upload_step.py"], "process_step.py": STEPS["process_step.py"]},
        # A prefix of its own: the module's running app shares this Redis and must not see it.
        f"redis:\n  url: {redis_server.url}\n  prefix: 'tok:'\nserver:\n  port: 0\n  auth_token: s3cret-token\n",
    )
    run = start_cli(tmp_path, "--no-ui")
    try:
        cross = {"content-type": "text/csv", "origin": "http://evil.example", "sec-fetch-site": "cross-site"}
        assert httpx.post(f"{run.url}/images", content=b"a\n1\n", headers=cross).status_code == 401
        ok = httpx.post(f"{run.url}/images", content=b"a\n1\n", headers={**cross, "authorization": "Bearer s3cret-token"})
        assert ok.status_code == 201 and ok.json()["ref"]["size"] == 4
        assert (tmp_path / ".iii" / "blobs" / "sha256").is_dir()
    finally:
        assert run.stop() == 0


def test_an_upload_the_store_cannot_write_is_a_503_not_a_500(app):
    """Given a blob store whose folder cannot take a file (its tmp folder replaced by a file: as root, modes would not
    stop the write), when an upload arrives, then 503, and uploads work again once the folder is back."""
    import shutil

    tmp = app.shared / "tmp"
    # The store makes its folders at its first upload, which another test may not have run yet.
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(b"")
    try:
        resp = httpx.post(f"{app.url}/images", content=b"\x00" * 1000, headers={"content-type": "application/octet-stream"})
        assert resp.status_code == 503 and resp.json()["error"] == "blob store unavailable, try again shortly"
    finally:
        tmp.unlink()
        tmp.mkdir(mode=0o700)
    assert (
        httpx.post(f"{app.url}/images", content=b"\x00" * 1000, headers={"content-type": "application/octet-stream"}).status_code
        == 201
    )


def test_a_state_change_larger_than_max_payload_bytes_still_fires_its_step(app, rc):
    """Given the payload limit, when a 400 KB state value changes, then its state step still runs: the limit is for
    data a handler enqueues, not for the runtime's own trigger messages of a change already stored."""
    from iii_console.core.state import StateStore

    StateStore(rc, KEYS).set("big-values", "k1", {"blob": "v" * 400_000})
    got = wait_for(lambda: rc.hget(KEYS.state_group("seen-big"), "k1"), what="the state step's run")
    assert json.loads(got) == {"len": 400_000}


def test_progress_streams_a_client_left_or_asked_for_with_head_free_their_connection_slot(tmp_path, redis_server):
    """Given a server limited to 6 connections at once and a progress stream that would run for a minute, when 12
    clients each ask for the stream with HEAD, and 12 more open it with GET, read its first bytes and close, then the
    server still answers after each (no stream runs on for a client that is gone, holding its slot), and a HEAD gets
    the stream's headers at once."""
    import socket
    import time

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    steps = {
        "prog_step.py": """
        from iii_console import Step, http, progress_stream
        config = Step(name="Prog", triggers=[http("GET", "/jobs/{trace}/progress")])
        def handler(req, ctx):
            return progress_stream(req.path_params["trace"], interval_ms=50, timeout_s=60)
        """
    }
    make_project(tmp_path, steps, "server:\n  port: 0\n  max_connections: 6\n", redis_url=redis_server.url)
    run = start_cli(tmp_path, "--no-ui", "--role", "server")
    host, port = run.url.removeprefix("http://").split(":")
    try:
        for i in range(12):
            t0 = time.monotonic()
            head = httpx.head(f"{run.url}/jobs/h{i}/progress", timeout=5)
            assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
            assert time.monotonic() - t0 < 2 and head.content == b""
        wait_for(lambda: httpx.get(f"{run.url}/health", timeout=5).status_code == 200, timeout=5, what="a free slot")
        for i in range(12):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(f"GET /jobs/g{i}/progress HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            # Closed: the client's FIN reaches the server while the stream runs.
            wait_for(lambda: httpx.get(f"{run.url}/health", timeout=5).status_code == 200, timeout=5, what="a free slot")
    finally:
        assert run.stop() == 0
        client.close()
    with open(run.proc.out.name) as out:  # type: ignore[attr-defined]
        said = "".join(run.lines) + out.read()
    assert "Exception in ASGI application" not in said and "without completing" not in said, said[-2000:]
