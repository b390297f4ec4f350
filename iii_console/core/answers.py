"""HTTP answers beyond JSON: a file to download, a stream of progress events.

An HTTP handler returns one of these (or a blob ref, or a ``pathlib.Path``, which
are downloads too) as its answer or as the ``body`` of ``{"status", "body",
"headers"}``; the server (``adapters/downloads.py``) streams it. Plain values
here, so the core stays free of the HTTP framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iii_console.core.blobs import BlobRef, is_ref


@dataclass(frozen=True)
class Download:
    """A file answer: a blob ref, a local path or bytes, streamed with ``Range`` support."""

    source: Any
    content_type: str | None = None
    filename: str | None = None
    #: ``Content-Disposition: inline`` (shown by the browser) rather than ``attachment`` (saved).
    inline: bool = False


def download(source: Any, *, content_type: str | None = None, filename: str | None = None, inline: bool = False) -> Download:
    """Answer with a file: ``return download(ref)``, ``download(Path("out.pdf"))``,
    ``download(b"a,b\\n", content_type="text/csv", filename="rows.csv")``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
    elif isinstance(source, (str, Path)) and not is_ref(source):
        if isinstance(source, str) and source.startswith("sha256:"):
            source = BlobRef.of(source)
        else:
            source = Path(source)
    elif is_ref(source):
        source = BlobRef.of(source)
    else:
        raise TypeError(f"download() takes a blob ref, a path or bytes, not {type(source).__name__}")
    if isinstance(source, bytes) and not content_type:
        raise TypeError("download(bytes) needs content_type= (what the bytes are)")
    return Download(source, content_type, filename, inline)


@dataclass(frozen=True)
class ProgressStream:
    """Server-sent events: the latest ``ctx.progress`` of ``trace_id`` each time it changes."""

    trace_id: str
    #: How often the trace's progress is read.
    interval_ms: int = 250
    #: The stream ends after this long even if the work never reaches its total.
    timeout_s: float = 3600.0


def progress_stream(trace_id: str, *, interval_ms: int = 250, timeout_s: float = 3600.0) -> ProgressStream:
    """Answer with a ``text/event-stream`` of the trace's progress: one ``progress`` event per
    change (``data``: done, total, percent, note, step), then ``done`` once done == total."""
    if not isinstance(trace_id, str) or not trace_id:
        raise TypeError("progress_stream(trace_id): a non-empty trace id")
    if not 10 <= interval_ms <= 60_000:
        raise ValueError("progress_stream: interval_ms must be between 10 and 60000")
    return ProgressStream(trace_id, interval_ms, timeout_s)


def is_answer(value: Any) -> bool:
    """Whether a handler's return (or its ``body``) is streamed rather than sent as JSON."""
    return isinstance(value, (Download, ProgressStream, Path)) or is_ref(value)
