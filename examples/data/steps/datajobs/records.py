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
import re
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
            open_quotes = _in_quotes_after(raw, open_quotes)
            if open_quotes:
                continue
        record = b"".join(buf)
        buf = []
        if record.strip():
            yield start_line, start, pos, record
    if buf:  # a quote never closed: the rest is one bad record
        yield start_line, start, pos, b"".join(buf)


def _in_quotes_after(line: bytes, in_quotes: bool) -> bool:
    """Whether a CSV line ends inside a quoted field, given whether it starts in one.

    As the ``csv`` module reads it (RFC 4180): a quote opens a quoted field only as the field's
    first character; inside one, ``""`` is a quote and a lone ``"`` closes it. A quote in the
    middle of a plain field (``6" pipe``) is just a character: counting quotes took it for an
    opening one, and the rest of the file became one bad record.
    """
    if b'"' not in line:
        return in_quotes
    at_start = not in_quotes  # a line that does not continue a quoted field starts a field
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if in_quotes:
            if c == 0x22:  # "
                if i + 1 < n and line[i + 1] == 0x22:
                    i += 1  # "" inside quotes
                else:
                    in_quotes = False
        elif c == 0x22 and at_start:
            in_quotes = True
        at_start = c == 0x2C and not in_quotes  # ,
        i += 1
    return in_quotes


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


#: The largest id and amount in cents a row can hold (``BIGINT``, SQLite's ``INTEGER``).
INT64_MAX = 2**63 - 1
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _text(f: dict[str, Any], name: str, *, empty_ok: bool = False) -> str:
    """A text field: JSON lines give it as a string (a number is taken as its digits); no NUL (PostgreSQL refuses it)."""
    value = f[name]
    if value is None and empty_ok:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRecord(f"{name}: must be text, not {json.dumps(value)[:40]}")
    text = str(value)
    if "\x00" in text:
        raise BadRecord(f"{name}: holds a NUL character")
    return text


def _check(f: dict[str, Any]) -> dict[str, Any]:
    missing = [c for c in COLUMNS if c not in f]
    if missing:
        raise BadRecord(f"missing {', '.join(missing)}")
    raw_id = _text(f, "id").strip()
    if not raw_id.isascii() or not raw_id.isdigit():
        raise BadRecord(f"id: not a whole number: {raw_id[:40]!r}")
    if len(raw_id) > 19 or not 0 < int(raw_id) <= INT64_MAX:
        raise BadRecord(f"id: must be from 1 to {INT64_MAX}, not {raw_id[:40]}")
    oid = int(raw_id)
    customer = _text(f, "customer").strip()
    if not customer or len(customer) > 200:
        raise BadRecord("customer: empty" if not customer else "customer: longer than 200 characters")
    raw_amount = _text(f, "amount").strip()
    try:
        amount = Decimal(raw_amount)
        exact = amount.is_finite() and amount == amount.quantize(Decimal("0.01"))
    except InvalidOperation:  # not a number, or too many digits to hold in cents
        raise BadRecord(f"amount: not an amount in cents' range: {raw_amount[:40]!r}") from None
    if not exact or amount < 0:
        raise BadRecord(f"amount: must be a non-negative amount with at most 2 decimals, not {raw_amount[:40]!r}")
    cents = int(amount * 100)
    if cents > INT64_MAX:
        raise BadRecord(f"amount: at most {Decimal(INT64_MAX) / 100}, not {raw_amount[:40]}")
    placed = _text(f, "placed_on").strip()
    try:
        if not _DATE.fullmatch(placed):
            raise ValueError
        placed_on = dt.date.fromisoformat(placed)
    except ValueError:
        raise BadRecord(f"placed_on: not a date (YYYY-MM-DD): {placed[:40]!r}") from None
    return {
        "id": oid,
        "customer": customer,
        "note": _text(f, "note", empty_ok=True),
        "amount_cents": cents,
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
