"""Reading an import file: one scan that plans chunks at record boundaries, then each chunk's records checked.

A CSV record may span lines (a quoted field holding a newline), so a chunk boundary is
found by counting quotes line by line: a record ends at a newline outside quotes (a
doubled quote ``""`` counts twice and changes nothing). JSON lines are one record per
line. Every record keeps the line it starts on, for the errors file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, BinaryIO

COLUMNS = ["id", "customer", "note", "amount", "placed_on"]
FORMATS = {"csv", "jsonl"}


class BadRecord(ValueError):
    """A record (or a file) that cannot be imported; its message goes to the errors file.

    Not retryable: the same bytes fail the same way on every attempt.
    """

    retryable = False


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    end: int
    line: int
    records: int


def records(fh: BinaryIO, fmt: str, end: int | None = None, line: int = 1) -> Iterator[tuple[int, int, int, bytes]]:
    """``(first line, start offset, end offset, raw bytes)`` of each record from the file's position up to
    ``end`` (blank lines are skipped)."""
    pos = fh.tell()
    buf: list[bytes] = []
    start_line, start = line, pos
    open_quotes = False
    while end is None or pos < end:
        raw = fh.readline()
        if not raw:
            break
        if not buf:
            start_line, start = line, pos
        pos += len(raw)
        line += 1
        buf.append(raw)
        if fmt == "csv":
            open_quotes ^= raw.count(b'"') % 2 == 1
            if open_quotes:
                continue
        record = b"".join(buf)
        buf = []
        if record.strip():
            yield start_line, start, pos, record
    if buf:  # a quote never closed: the rest is one bad record
        yield start_line, start, pos, b"".join(buf)


def plan(fh: BinaryIO, fmt: str, chunk_records: int) -> tuple[list[str], list[Chunk]]:
    """One pass over the file: its header (CSV) and chunks of up to ``chunk_records`` records."""
    it = records(fh, fmt)
    header: list[str] = []
    if fmt == "csv":
        first = next(it, None)
        if first is None:
            raise BadRecord("the file is empty: a CSV import needs a header line")
        try:
            header = [h.strip() for h in next(csv.reader(io.StringIO(first[3].decode("utf-8-sig"))))]
        except UnicodeDecodeError:
            raise BadRecord("the header line is not UTF-8") from None
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise BadRecord(f"the header lacks {', '.join(missing)} (it has {', '.join(header)})")
    chunks: list[Chunk] = []
    batch: list[tuple[int, int, int]] = []
    for line, start, end, _raw in it:
        batch.append((line, start, end))
        if len(batch) == chunk_records:
            chunks.append(Chunk(len(chunks), batch[0][1], batch[-1][2], batch[0][0], len(batch)))
            batch = []
    if batch:
        chunks.append(Chunk(len(chunks), batch[0][1], batch[-1][2], batch[0][0], len(batch)))
    return header, chunks


def parse(raw: bytes, fmt: str, header: list[str]) -> dict[str, Any]:
    """One record's fields as the ``orders`` table takes them; :class:`BadRecord` says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"not UTF-8 (byte {exc.start})") from None
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        if len(rows) != 1:
            raise BadRecord("a quoted field is never closed")
        if len(rows[0]) != len(header):
            raise BadRecord(f"{len(rows[0])} fields, the header has {len(header)}")
        fields: dict[str, Any] = dict(zip(header, rows[0]))
    else:
        try:
            fields = json.loads(text)
        except ValueError as exc:
            raise BadRecord(f"not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise BadRecord("not a JSON object")
    return _check(fields)


def _check(f: dict[str, Any]) -> dict[str, Any]:
    missing = [c for c in COLUMNS if c not in f]
    if missing:
        raise BadRecord(f"missing {', '.join(missing)}")
    try:
        oid = int(str(f["id"]).strip())
    except ValueError:
        raise BadRecord(f"id: not a whole number: {str(f['id'])[:40]!r}") from None
    if oid <= 0:
        raise BadRecord(f"id: must be positive, not {oid}")
    customer = str(f["customer"]).strip()
    if not customer or len(customer) > 200:
        raise BadRecord("customer: empty" if not customer else "customer: longer than 200 characters")
    try:
        amount = Decimal(str(f["amount"]).strip())
    except InvalidOperation:
        raise BadRecord(f"amount: not a number: {str(f['amount'])[:40]!r}") from None
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise BadRecord(f"amount: must be a non-negative amount with at most 2 decimals, not {f['amount']!r}")
    try:
        placed_on = dt.date.fromisoformat(str(f["placed_on"]).strip())
    except ValueError:
        raise BadRecord(f"placed_on: not a date (YYYY-MM-DD): {str(f['placed_on'])[:40]!r}") from None
    return {
        "id": oid,
        "customer": customer,
        "note": str(f["note"] or ""),
        "amount_cents": int(amount * 100),
        "placed_on": placed_on,
    }


def format_of(content_type: str | None, name: str | None) -> str | None:
    """``csv`` or ``jsonl`` from a media type, else from a file name's extension."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in ("text/csv", "application/csv"):
        return "csv"
    if ct in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/jsonlines"):
        return "jsonl"
    ext = (name or "").rsplit(".", 1)[-1].lower()
    return {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}.get(ext)
