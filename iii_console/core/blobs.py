"""Blobs: data passed by reference (``ctx.blobs``).

A blob is stored once under its sha256 (a resubmit of the same bytes costs nothing
and returns an equal ref); messages and events carry a small :class:`BlobRef`
(hash, size, content type, name) instead of the bytes. The store is a folder:
``.iii/blobs/`` by default, or a folder several hosts mount (``blobs.url:
file:///mnt/shared/blobs``). Writes go to a temporary file in the same folder,
are fsynced and renamed into place, so a reader never sees half a blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import unquote, urlsplit

from iii_console.core.errors import IIIError

#: The key that marks a JSON object as a blob ref.
REF_KEY = "$blob"
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


class BlobError(IIIError):
    """A value that is not a blob ref, or a blob that cannot be stored."""


class BlobNotFound(BlobError, LookupError):
    """A well-formed ref whose bytes this store does not hold."""


class BlobRef(dict):
    """``{"$blob": "sha256:<hex>", "size": n, "content_type": ..., "name": ...}``.

    A dict, so it travels in messages, events and HTTP answers as plain JSON; a ref
    read back from a message (a plain dict) is accepted wherever a ``BlobRef`` is.
    """

    @classmethod
    def make(cls, sha256: str, size: int, content_type: str | None = None, name: str | None = None) -> BlobRef:
        return cls(
            {
                REF_KEY: f"sha256:{sha256}",
                "size": size,
                "content_type": content_type or "application/octet-stream",
                "name": name or None,
            }
        )

    @classmethod
    def of(cls, value: Any) -> BlobRef:
        """The ref in ``value`` (a ref dict or a ``"sha256:<hex>"`` string); :class:`BlobError` otherwise."""
        if isinstance(value, str):
            if _HASH.fullmatch(value):
                return cls({REF_KEY: value, "size": None, "content_type": "application/octet-stream", "name": None})
        elif isinstance(value, dict) and isinstance(value.get(REF_KEY), str) and _HASH.fullmatch(value[REF_KEY]):
            return value if isinstance(value, BlobRef) else cls(value)
        raise BlobError(
            f"not a blob ref: {_short(value)} (expected what ctx.blobs.put returned, "
            "{'$blob': 'sha256:<64 hex digits>', ...}, or 'sha256:<64 hex digits>')"
        )

    @property
    def sha256(self) -> str:
        return self[REF_KEY].split(":", 1)[1]

    @property
    def size(self) -> int | None:
        return self.get("size")

    @property
    def content_type(self) -> str:
        return self.get("content_type") or "application/octet-stream"

    @property
    def name(self) -> str | None:
        return self.get("name")


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(REF_KEY), str) and bool(_HASH.fullmatch(value[REF_KEY]))


def describe_ref(value: Any) -> str:
    """How the console and ``tail`` show a ref: name, size and type, never bytes."""
    ref = BlobRef.of(value)
    size = ref.size
    human = "?" if not isinstance(size, int) else _human(size)
    return f"blob {ref.name or ref.sha256[:12]} ({human}, {ref.content_type})"


def summarise_refs(value: Any, depth: int = 0) -> Any:
    """``value`` with every blob ref in it replaced by :func:`describe_ref`'s text."""
    if depth > 50:
        return value
    if is_ref(value):
        return describe_ref(value)
    if isinstance(value, dict):
        return {k: summarise_refs(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [summarise_refs(v, depth + 1) for v in value]
    return value


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def store_root(url: str, data_dir: Path) -> Path:
    """The folder of ``blobs.url``: empty = ``data_dir/blobs``; ``file:///path`` = that folder."""
    if not url:
        return data_dir / "blobs"
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        if parts.scheme == "file":
            raise BlobError(
                "a file:// URL names an absolute path on this host, file:///mnt/shared/blobs "
                "(three slashes; file://HOST/... is not supported: mount the share instead)"
            )
        got = f"a {parts.scheme}:// URL" if parts.scheme.isalnum() else "no URL"
        raise BlobError(
            f"must be empty (the project's .iii/blobs) or file:///absolute/path (a folder every host mounts), not {got}"
        )
    return Path(unquote(parts.path))


class Writer:
    """A blob being written: feed chunks, then :meth:`commit` (or :meth:`abort`)."""

    def __init__(self, store: BlobStore, limit: int | None = None):
        self.store, self.limit = store, limit
        self.size = 0
        self._hash = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=store.tmp_dir, prefix="up-")
        self._fh: IO[bytes] | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        assert self._fh is not None, "writer already closed"
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            self.abort()
            raise BlobTooLarge(self.limit)
        self._hash.update(chunk)
        self._fh.write(chunk)

    def commit(self, content_type: str | None = None, name: str | None = None) -> BlobRef:
        assert self._fh is not None, "writer already closed"
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        digest = self._hash.hexdigest()
        final = self.store._file(digest)
        if final.exists():  # content-addressed: the same bytes are there already
            os.unlink(self._tmp)
            # A put is a use: a sweep that deletes blobs stored before some time must not
            # take bytes that were put again just now (and may ride in a message already).
            os.utime(final)
        else:
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._tmp, 0o600 if self.store.private else 0o640)
            os.replace(self._tmp, final)
        return BlobRef.make(digest, self.size, content_type, name)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class BlobInfo:
    """One blob of a store as a sweep sees it: its ref (hash and size) and when it was last put."""

    ref: BlobRef
    stored_ms: int


class BlobTooLarge(BlobError):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"blob larger than {limit} bytes")


class BlobStore:
    """A content-addressed folder: ``ROOT/sha256/ab/<hex>``; temporary files in ``ROOT/tmp``."""

    def __init__(self, root: Path, url: str = "", *, private: bool = True):
        self.root = Path(root)
        self.url = url or self.root.as_uri()
        #: The project's own store is ``0700`` with ``0600`` files; in a shared folder files are
        #: ``0640`` and the folder keeps the modes its hosts set up (they may run as users of one group).
        self.private = private
        for d in (self.root, self.root / "sha256", self.root / "tmp"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if private:
            os.chmod(self.root, 0o700)
        self.tmp_dir = self.root / "tmp"

    @classmethod
    def from_config(cls, url: str, data_dir: Path) -> BlobStore:
        return cls(store_root(url, data_dir), url, private=not url)

    def _file(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def writer(self, limit: int | None = None) -> Writer:
        return Writer(self, limit)

    def put(
        self,
        data: bytes | bytearray | memoryview | BinaryIO | str | os.PathLike[str],
        content_type: str | None = None,
        name: str | None = None,
    ) -> BlobRef:
        """Store bytes, a binary file object or the file at a path; returns its ref (equal for equal bytes)."""
        w = self.writer()
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                w.write(bytes(data))
            elif isinstance(data, (str, os.PathLike)):
                path = Path(data)
                if not path.is_file():
                    raise BlobError(f"ctx.blobs.put: {str(path)!r} is not a file")
                name = name or path.name
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        w.write(chunk)
            elif hasattr(data, "read"):
                while chunk := data.read(CHUNK):
                    if not isinstance(chunk, (bytes, bytearray)):
                        raise BlobError("ctx.blobs.put: the file object must be opened in binary mode ('rb')")
                    w.write(bytes(chunk))
            else:
                raise BlobError(f"ctx.blobs.put takes bytes, a binary file object or a path, not {type(data).__name__}")
        except BaseException:
            w.abort()
            raise
        return w.commit(content_type, name)

    def path(self, ref: Any) -> Path:
        """The local file holding the blob; :class:`BlobNotFound` if this store has none."""
        r = BlobRef.of(ref)
        p = self._file(r.sha256)
        if not p.is_file():
            raise BlobNotFound(f"no blob sha256:{r.sha256} in the blob store {self.url} (deleted, or stored by another store?)")
        return p

    def open(self, ref: Any) -> BinaryIO:
        """The blob's bytes as a binary file object (close it, or use ``with``)."""
        try:
            return open(self.path(ref), "rb")
        except FileNotFoundError:  # deleted between the check and the open
            raise BlobNotFound(f"no blob {BlobRef.of(ref)[REF_KEY]} in the blob store {self.url}") from None

    def read(self, ref: Any) -> bytes:
        with self.open(ref) as fh:
            return fh.read()

    def exists(self, ref: Any) -> bool:
        return self._file(BlobRef.of(ref).sha256).is_file()

    def delete(self, ref: Any, *, stored_before_ms: int | None = None) -> bool:
        """Remove the blob; ``False`` if it was not there. Every ref to the same bytes loses them.

        With ``stored_before_ms``, only if it was last put before that time (epoch ms), read
        again just before the unlink: a sweep keeps bytes that were put again since it looked.
        """
        f = self._file(BlobRef.of(ref).sha256)
        try:
            if stored_before_ms is not None and f.stat().st_mtime_ns // 1_000_000 >= stored_before_ms:
                return False
            os.unlink(f)
            return True
        except FileNotFoundError:
            return False

    def scan(self) -> Iterator[BlobInfo]:
        """Every blob in the store with when it was last put, in no particular order (for sweeps)."""
        for sub in (self.root / "sha256").iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if not _HEX.fullmatch(f.name):
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield BlobInfo(BlobRef.make(f.name, st.st_size), st.st_mtime_ns // 1_000_000)


class AsyncBlobs:
    """``ctx.blobs`` of ``async def`` handlers: the same methods, awaited (file I/O runs in a thread)."""

    def __init__(self, store: BlobStore):
        self.store = store

    async def put(self, data: Any, content_type: str | None = None, name: str | None = None) -> BlobRef:
        return await asyncio.to_thread(self.store.put, data, content_type, name)

    async def open(self, ref: Any) -> BinaryIO:
        return await asyncio.to_thread(self.store.open, ref)

    async def read(self, ref: Any) -> bytes:
        return await asyncio.to_thread(self.store.read, ref)

    async def exists(self, ref: Any) -> bool:
        return await asyncio.to_thread(self.store.exists, ref)

    async def delete(self, ref: Any, *, stored_before_ms: int | None = None) -> bool:
        return await asyncio.to_thread(lambda: self.store.delete(ref, stored_before_ms=stored_before_ms))

    async def scan(self) -> list[BlobInfo]:
        return await asyncio.to_thread(lambda: list(self.store.scan()))

    def path(self, ref: Any) -> Path:
        return self.store.path(ref)
