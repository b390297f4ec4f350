"""Blobs: the content-addressed store itself, on real folders, and the payload limit at enqueue on real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from iii_console.adapters.queue.errors import PayloadTooLarge
from iii_console.adapters.queue.names import Subscription
from iii_console.adapters.queue.producer import Producer
from iii_console.core.blobs import AsyncBlobs, BlobError, BlobNotFound, BlobRef, BlobStore, describe_ref, summarise_refs
from iii_console.core.config import Config, ConfigError
from iii_console.core.emitter import null_emitter

from ..helpers import make_project


def test_put_is_content_addressed_and_keeps_size_type_and_name(tmp_path):
    """Given the default store, when the same bytes are put as bytes, a file object and a path, then each ref names the
    same sha256 and size, keeps its content type and name, and only one file holds them."""
    store = BlobStore.from_config("", tmp_path / ".iii")
    data = os.urandom(300_000)
    src = tmp_path / "photo.jpg"
    src.write_bytes(data)
    a = store.put(data, content_type="image/jpeg", name="a.jpg")
    b = store.put(io.BytesIO(data))
    c = store.put(src, content_type="image/jpeg")
    digest = hashlib.sha256(data).hexdigest()
    assert a.sha256 == b.sha256 == c.sha256 == digest and a.size == b.size == c.size == len(data)
    assert (a.content_type, a.name) == ("image/jpeg", "a.jpg")
    assert (b.content_type, b.name) == ("application/octet-stream", None)
    assert c.name == "photo.jpg"
    files = [p for p in (tmp_path / ".iii" / "blobs" / "sha256").rglob("*") if p.is_file()]
    assert files == [store.path(a)] and store.read(b) == data
    assert not list((tmp_path / ".iii" / "blobs" / "tmp").iterdir())  # written through a temp file, renamed
    assert stat.S_IMODE((tmp_path / ".iii" / "blobs").stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path(a).stat().st_mode) == 0o600


def test_a_ref_is_plain_json_and_a_ref_read_back_from_a_message_works(tmp_path):
    """Given a ref, when it goes through JSON (as in a message), then the plain dict and its 'sha256:' string open the
    same bytes, and the console's text for it is name, size and type."""
    import json

    store = BlobStore(tmp_path / "b")
    ref = store.put(b"a,b\n1,2\n", content_type="text/csv", name="rows.csv")
    back = json.loads(json.dumps({"file": ref}))["file"]
    assert type(back) is dict and store.read(back) == b"a,b\n1,2\n" and store.read(ref["$blob"]) == b"a,b\n1,2\n"
    assert describe_ref(back) == "blob rows.csv (8 B, text/csv)"
    assert summarise_refs({"x": [back], "n": 1}) == {"x": ["blob rows.csv (8 B, text/csv)"], "n": 1}


def test_unknown_and_malformed_refs_are_clear_errors_and_delete_removes(tmp_path):
    """Given a store, when a ref it never held, a malformed ref or a deleted one is opened, then the error says which
    and where; delete says whether there was anything to delete."""
    store = BlobStore(tmp_path / "b")
    missing = "sha256:" + "0" * 64
    with pytest.raises(BlobNotFound, match=r"no blob sha256:0000.* in the blob store file://"):
        store.open(missing)
    for bad in ("abc", {"$blob": "md5:x"}, 42, {"sha": 1}):
        with pytest.raises(BlobError, match="not a blob ref"):
            store.path(bad)
    with pytest.raises(BlobError, match="takes bytes, a binary file object or a path"):
        store.put(3.5)  # type: ignore[arg-type]
    with pytest.raises(BlobError, match="binary mode"):
        store.put(io.StringIO("text"))
    ref = store.put(b"x")
    assert store.delete(ref) is True and store.delete(ref) is False
    with pytest.raises(BlobNotFound):
        store.path(ref)
    assert not list((tmp_path / "b" / "tmp").iterdir())  # the refused put left no temp file


def test_async_blobs_do_the_same_off_the_loop(tmp_path):
    """Given the async flavour, when awaited, then it stores and reads the same blobs as the sync store."""
    blobs = AsyncBlobs(BlobStore(tmp_path / "b"))

    async def go() -> tuple[BlobRef, bytes, bool]:
        ref = await blobs.put(b"hello", content_type="text/plain", name="h.txt")
        return ref, await blobs.read(ref), await blobs.delete(ref)

    ref, data, deleted = asyncio.run(go())
    assert data == b"hello" and deleted and ref.name == "h.txt"


def test_a_shared_folder_store_is_seen_by_another_process(tmp_path):
    """Given blobs.url on a folder (file://), when another process puts a blob there, then this process opens it by
    the ref that process printed: what hosts sharing a mounted folder do."""
    shared = tmp_path / "mnt" / "shared-blobs"
    url = shared.as_uri()
    code = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from iii_console.core.blobs import BlobStore
        ref = BlobStore.from_config({url!r}, Path("/nonexistent")).put(b"from another host" * 1000, content_type="text/plain")
        print(json.dumps(ref))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    ref = json.loads(out)
    store = BlobStore.from_config(url, tmp_path / ".iii")
    assert store.root == shared and store.read(ref) == b"from another host" * 1000
    assert not (tmp_path / ".iii").exists()


def test_blobs_url_must_be_a_file_url_named_with_file_and_line(tmp_path):
    """Given blobs.url that is not a folder URL, when the config loads, then the error names file, line and key."""
    (tmp_path / "iii-config.yaml").write_text("blobs:\n  url: s3://bucket/x\n")
    from iii_console.core.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "iii-config.yaml", env={})
    assert "iii-config.yaml:2" in str(err.value) and "blobs.url" in str(err.value) and "file:///absolute/path" in str(err.value)


def test_an_oversized_payload_is_refused_at_enqueue_and_nothing_is_written(redis_url, r, keys, tmp_path):
    """Given queues.default.max_payload_bytes of 256 KiB (the default) and 4 KiB for one topic, when data over the limit
    is enqueued, then PayloadTooLarge names the topic, size and limit and points to ctx.blobs, and Redis holds nothing;
    a blob ref of the same data enqueues."""
    cfg = make_project(tmp_path, {}, "queues:\n  small:\n    max_payload_bytes: 4096\n", redis_url=redis_url)
    assert cfg.queue("other").max_payload_bytes == 262_144
    subs = {"big": [Subscription("big", "S")], "small": [Subscription("small", "S")]}
    prod = Producer(r, keys, cfg, subs, null_emitter())
    before = r.dbsize()
    with pytest.raises(PayloadTooLarge) as err:
        prod.enqueue("big", {"pixels": "x" * 300_000}, trace_id=uuid.uuid4().hex)
    assert (
        "topic 'big'" in str(err.value) and "max_payload_bytes (262144)" in str(err.value) and "ctx.blobs.put" in str(err.value)
    )
    with pytest.raises(PayloadTooLarge, match=r"queues.small.max_payload_bytes \(4096\)"):
        prod.enqueue("small", {"rows": "y" * 5000}, trace_id=uuid.uuid4().hex)
    assert r.dbsize() == before
    ref = BlobStore(tmp_path / "b").put(b"x" * 300_000)
    assert len(prod.enqueue("big", {"pixels": ref}, trace_id=uuid.uuid4().hex) or []) == 1


def test_max_payload_bytes_is_validated(tmp_path):
    with pytest.raises(Exception, match="max_payload_bytes"):
        Config(queues={"t": {"max_payload_bytes": 10}})


def test_tail_and_the_console_show_a_ref_as_name_size_and_type():
    """Given a message.enqueued event whose payload holds a blob ref, when tail formats it, then the line shows the
    blob's name, size and type, not the ref's JSON."""
    from iii_console.core.events import Event
    from iii_console.format import line

    ref = BlobRef.make("ab" * 32, 5_300_000, "image/png", "cat.png")
    ev = Event(type="message.enqueued", ts=0, trace_id="t" * 32, topic="images", data={"payload": {"image": ref}})
    text = line(ev)
    assert "blob cat.png (5.1 MiB, image/png)" in text and "$blob" not in text


def test_the_consoles_event_line_shows_a_ref_the_same_way():
    from iii_console.core.events import Event
    from iii_console.tui.fmt import event_line

    ref = BlobRef.make("cd" * 32, 1200, "text/csv", "orders.csv")
    ev = Event(type="http.received", ts=0, trace_id="t" * 32, step="Upload", data={"method": "POST", "path": "/u", "body": ref})
    assert "blob orders.csv (1.2 KiB, text/csv)" in event_line(ev).plain


def test_a_shared_store_leaves_its_folder_modes_and_makes_group_readable_files(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    store = BlobStore.from_config(shared.as_uri(), tmp_path / ".iii")
    ref = store.put(b"group data")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o750 and stat.S_IMODE(store.path(ref).stat().st_mode) == 0o640


@pytest.mark.parametrize(
    "header, size, expected",
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=50-5000", 100, (50, 99)),
        ("bytes=100-", 100, False),
        ("bytes=-0", 100, False),
        ("bytes=0-", 0, False),
        ("bytes=9-3", 100, None),  # invalid: ignored, the whole file
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file
        ("items=0-5", 100, None),
        ("bytes=x-y", 100, None),
        ("bytes=" + "9" * 5000 + "-", 100, False),  # past the end, however many digits
        ("bytes=-" + "9" * 5000, 100, (0, 99)),  # more than the file: all of it
        ("bytes=10-" + "9" * 5000, 100, (10, 99)),
        ("bytes=" + "0" * 5000 + "5-9", 100, (5, 9)),
    ],
)
def test_range_headers_read_as_rfc_9110_says(header, size, expected):
    from iii_console.adapters.downloads import parse_range

    assert parse_range(header, size) == expected


def test_a_sweep_sees_each_blob_with_when_it_was_last_put_and_keeps_what_was_put_again(tmp_path):
    """Given two blobs stored an hour ago, when one is put again and a sweep deletes those stored before ten minutes
    ago, then scan listed both with their age, only the one not put again is deleted, and a missing one is False."""
    store = BlobStore(tmp_path / "b")
    old, again = store.put(b"old bytes"), store.put(b"put again")
    hour_ago = time.time() - 3600
    for ref in (old, again):
        os.utime(store.path(ref), (hour_ago, hour_ago))
    seen = {info.ref.sha256: info for info in store.scan()}
    assert set(seen) == {old.sha256, again.sha256}
    assert seen[old.sha256].ref.size == len(b"old bytes")
    assert abs(seen[old.sha256].stored_ms - hour_ago * 1000) < 2000
    store.put(b"put again")  # a new use of the same bytes
    cutoff = int((time.time() - 600) * 1000)
    assert store.delete(again, stored_before_ms=cutoff) is False
    assert store.delete(old, stored_before_ms=cutoff) is True
    assert [i.ref.sha256 for i in store.scan()] == [again.sha256]
    assert store.delete(old, stored_before_ms=cutoff) is False
    assert [i.ref.sha256 for i in asyncio.run(AsyncBlobs(store).scan())] == [again.sha256]
