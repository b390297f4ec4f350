"""File downloads (with ``Range``) and server-sent progress streams for HTTP steps.

A handler's answer that is a blob ref, a ``Path``, a :class:`~iii_console.core.answers.Download`
or a :class:`~iii_console.core.answers.ProgressStream` becomes a streamed Litestar response
here: files are read in chunks off the event loop, one ``bytes=a-b`` range is answered ``206``
(several ranges get the whole file, as RFC 9110 allows), an unsatisfiable one ``416``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from litestar import Response
from litestar.response import Stream

from iii_console.core.answers import Download, ProgressStream
from iii_console.core.blobs import BlobRef, BlobStore, is_ref

CHUNK = 256 * 1024
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


class NotFound(Exception):
    """A download whose file or blob is not there."""


class BadAnswer(ValueError):
    """A download whose content type or file name cannot be sent (a handler's fault, answered 500 with ``step.error``)."""


#: A media type as a ``Content-Type`` carries it (parameters allowed), on one line.
_MEDIA_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+(\s*;[^\r\n\0]*)?")


def _checked(ctype: Any, name: Any) -> tuple[str | None, str | None]:
    if ctype is not None and (not isinstance(ctype, str) or not _MEDIA_TYPE.fullmatch(ctype) or not ctype.isascii()):
        raise BadAnswer(f"content type {str(ctype)[:100]!r}: not a media type such as 'text/csv'")
    if name is not None and not isinstance(name, str):
        raise BadAnswer(f"file name of type {type(name).__name__}: not a string")
    return ctype, name


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """``(first, last)`` of one satisfiable ``bytes=`` range; ``None`` for no usable range
    (absent, malformed, several: the whole file is sent); ``False`` if unsatisfiable (416)."""
    if not header or "," in header:
        return None
    m = _RANGE.fullmatch(header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # bytes=-N: the last N bytes
        n = _position(m.group(2))
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size - 1
    first = _position(m.group(1))
    last = _position(m.group(2)) if m.group(2) else size - 1
    if first >= size:
        return False
    if last < first:
        return None
    return first, min(last, size - 1)


def _position(digits: str) -> int:
    """A range's byte position; past any file's size (more than 18 digits) it stands as 10**18, not converted
    (Python refuses to convert over 4,300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


def disposition(filename: str | None, inline: bool) -> str:
    kind = "inline" if inline else "attachment"
    if not filename:
        return kind
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def _file_chunks(path: Path, first: int, length: int) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(fh.seek, first)
        left = length
        while left > 0:
            chunk = await asyncio.to_thread(fh.read, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)


async def _bytes_chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


def download_response(
    answer: Any, store: BlobStore, *, status: int, headers: dict[str, str], range_header: str | None
) -> Response[Any]:
    """Stream ``answer`` (a blob ref, a Path or a Download); :class:`NotFound` if its file is gone."""
    dl = answer if isinstance(answer, Download) else Download(answer)
    src = dl.source
    out = dict(headers)
    ctype: str | None
    name: str | None
    if is_ref(src):
        ref = BlobRef.of(src)
        try:
            path: Path | None = store.path(ref)
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        ctype, name = dl.content_type or ref.content_type, dl.filename or ref.name
        out["ETag"] = f'"{ref.sha256}"'
    elif isinstance(src, Path):
        path, ctype, name = src, dl.content_type, dl.filename or src.name
        if not path.is_file():
            raise NotFound(f"{src.name}: no such file")
        if ctype is None:
            import mimetypes

            ctype = mimetypes.guess_type(src.name)[0] or "application/octet-stream"
    else:
        path, ctype, name = None, dl.content_type, dl.filename
    ctype, name = _checked(ctype, name)
    size = path.stat().st_size if path is not None else len(src)
    out["Content-Disposition"] = disposition(name, dl.inline)
    out["Accept-Ranges"] = "bytes"
    first, last = 0, size - 1
    if status == 200:
        rng = parse_range(range_header, size)
        if rng is False:
            out["Content-Range"] = f"bytes */{size}"
            return Response({"error": "range not satisfiable", "size": size}, status_code=416, headers=out)
        if isinstance(rng, tuple):
            first, last = rng
            status = 206
            out["Content-Range"] = f"bytes {first}-{last}/{size}"
    length = max(0, last - first + 1)
    out["Content-Length"] = str(length)
    body = _file_chunks(path, first, length) if path is not None else _bytes_chunks(src[first : first + length])
    return Stream(body, status_code=status, headers=out, media_type=ctype or "application/octet-stream")


def progress_response(stream: ProgressStream, client: Any, keys: Any, headers: dict[str, str]) -> Response[Any]:
    """``text/event-stream``: a ``progress`` event each time the trace's progress changes, ``done`` at the end."""
    key = keys.progress(stream.trace_id)

    async def events() -> AsyncIterator[str]:
        deadline = time.monotonic() + stream.timeout_s
        last: bytes | None = None
        quiet_since = time.monotonic()
        yield "retry: 1000\n\n"
        while time.monotonic() < deadline:
            raw = await client.get(key)
            if raw is not None and raw != last:
                last = raw
                value = json.loads(raw)
                yield f"event: progress\ndata: {json.dumps(value, separators=(',', ':'))}\n\n"
                quiet_since = time.monotonic()
                if value.get("done") is not None and value.get("done") >= value.get("total", float("inf")):
                    yield f"event: done\ndata: {json.dumps({'trace_id': stream.trace_id})}\n\n"
                    return
            elif time.monotonic() - quiet_since > 15:
                yield ": keep-alive\n\n"  # a comment: proxies keep the connection open
                quiet_since = time.monotonic()
            await asyncio.sleep(stream.interval_ms / 1000)
        yield f"event: timeout\ndata: {json.dumps({'trace_id': stream.trace_id})}\n\n"

    out = {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Stream(events(), status_code=200, headers=out, media_type="text/event-stream")
